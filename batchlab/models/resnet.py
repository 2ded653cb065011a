"""ResNet-50 for inference: bottleneck blocks, batch norm on running statistics, NHWC.

The stride of a downsampling block sits on its 3x3 convolution (torchvision's "v1.5"),
the variant whose cost is the usual ~4.1 G multiply-adds at 224x224 (REFERENCE 2.6).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, stride)
EXPANSION = 4  # a bottleneck's output has 4x its width in channels


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand, plus a projected shortcut when shapes change."""

    width: int
    stride: int
    dtype: Any
    precision: jax.lax.Precision

    @nn.compact
    def __call__(self, x_BxHxWxC):
        conv = functools.partial(
            nn.Conv,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.dtype,
            precision=self.precision,
        )
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=True,
            dtype=self.dtype,
            param_dtype=self.dtype,
            # Non-zero shifts: zeros can make kernels faster than real data would.
            bias_init=nn.initializers.normal(0.02),
        )
        out = self.width * EXPANSION
        y = nn.relu(norm()(conv(self.width, (1, 1))(x_BxHxWxC)))
        y = nn.relu(norm()(conv(self.width, (3, 3), (self.stride, self.stride))(y)))
        y = norm()(conv(out, (1, 1))(y))
        shortcut = x_BxHxWxC
        if x_BxHxWxC.shape[-1] != out or self.stride != 1:
            shortcut = norm()(conv(out, (1, 1), (self.stride, self.stride))(x_BxHxWxC))
        return nn.relu(y + shortcut)


class ResNet50(nn.Module):
    """Maps images x_BxHxWx3 to logits y_BxN (N = 1000 classes)."""

    classes: int = 1000
    dtype: Any = jnp.float32
    precision: jax.lax.Precision = jax.lax.Precision.DEFAULT

    @nn.compact
    def __call__(self, x_BxHxWx3):
        x = nn.Conv(
            64,
            (7, 7),
            (2, 2),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.dtype,
            precision=self.precision,
            name="stem_conv",
        )(x_BxHxWx3)
        x = nn.BatchNorm(
            use_running_average=True,
            dtype=self.dtype,
            param_dtype=self.dtype,
            bias_init=nn.initializers.normal(0.02),
            name="stem_norm",
        )(x)
        x = nn.max_pool(nn.relu(x), (3, 3), (2, 2), "SAME")
        for s, (width, blocks, stride) in enumerate(STAGES):
            for i in range(blocks):
                x = Bottleneck(
                    width,
                    stride if i == 0 else 1,
                    self.dtype,
                    self.precision,
                    name=f"stage{s + 1}_block{i + 1}",
                )(x)
        x_BxC = jnp.mean(x, axis=(1, 2))
        return nn.Dense(
            self.classes,
            dtype=self.dtype,
            param_dtype=self.dtype,
            precision=self.precision,
            bias_init=nn.initializers.normal(0.02),
            name="fc",
        )(x_BxC)
