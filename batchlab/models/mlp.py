"""A plain MLP: `depth` dense layers with ReLU between them (the post's C3/C4 model)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
    """Maps x_BxI to y_BxD through `depth` Dense layers of width D."""

    depth: int
    width: int
    dtype: Any = jnp.float32
    precision: jax.lax.Precision = jax.lax.Precision.DEFAULT

    @nn.compact
    def __call__(self, x_BxI):
        x = x_BxI
        for i in range(self.depth):
            x = nn.Dense(
                self.width,
                dtype=self.dtype,
                param_dtype=self.dtype,
                precision=self.precision,
                # Non-zero biases: zeros can make kernels faster than real data would.
                bias_init=nn.initializers.normal(0.02),
                name=f"dense_{i}",
            )(x)
            if i < self.depth - 1:
                x = nn.relu(x)
        return x
