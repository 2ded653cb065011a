"""Dtypes and matmul precision: names users type, mapped to what JAX and the roofline need."""

import dataclasses

import jax
import jax.numpy as jnp

from batchlab.errors import ConfigError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
PRECISIONS = {
    "default": jax.lax.Precision.DEFAULT,
    "high": jax.lax.Precision.HIGH,
    "highest": jax.lax.Precision.HIGHEST,
}


@dataclasses.dataclass(frozen=True)
class Numerics:
    """The dtype of weights and activations, and the matmul precision."""

    dtype: str = "float32"
    precision: str = "default"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype={self.dtype}: allowed are {', '.join(DTYPES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision={self.precision}: allowed are {', '.join(PRECISIONS)}")

    @property
    def jnp_dtype(self):
        return DTYPES[self.dtype]

    @property
    def itemsize(self) -> int:
        """Bytes per element (s_w and s_a of REFERENCE 2)."""
        return jnp.dtype(self.jnp_dtype).itemsize

    @property
    def lax_precision(self) -> jax.lax.Precision:
        return PRECISIONS[self.precision]
