"""A plain conv stack and pooling, NHWC (the post's C6 and C7 models)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class ConvStack(nn.Module):
    """Maps x_BxHxWxC through `layers` convolutions of `channels` filters, ReLU between."""

    layers: int
    channels: int
    kernel_size: int
    stride: int = 1
    padding: str = "SAME"  # or "VALID"
    dtype: Any = jnp.float32
    precision: jax.lax.Precision = jax.lax.Precision.DEFAULT

    @nn.compact
    def __call__(self, x_BxHxWxC):
        x = x_BxHxWxC
        for i in range(self.layers):
            x = nn.Conv(
                self.channels,
                (self.kernel_size, self.kernel_size),
                strides=(self.stride, self.stride),
                padding=self.padding,
                dtype=self.dtype,
                param_dtype=self.dtype,
                precision=self.precision,
                # Non-zero biases: zeros can make kernels faster than real data would.
                bias_init=nn.initializers.normal(0.02),
                name=f"conv_{i}",
            )(x)
            if i < self.layers - 1:
                x = nn.relu(x)
        return x


class Pool(nn.Module):
    """Max or average pooling of x_BxHxWxC over k x k windows; it has no parameters."""

    kind: str  # "max" or "avg"
    window: int
    stride: int
    padding: str = "SAME"

    @nn.compact
    def __call__(self, x_BxHxWxC):
        pool = {"max": nn.max_pool, "avg": nn.avg_pool}[self.kind]
        window, strides = (self.window, self.window), (self.stride, self.stride)
        return pool(x_BxHxWxC, window, strides, self.padding)
