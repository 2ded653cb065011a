"""The registry of model families, picked by name."""

import importlib

from batchlab.errors import ConfigError
from batchlab.workloads import conv_layer, decoder, ffn, mlp, moe, pooling, resnet
from batchlab.workloads.base import Cost, Family, Param, Point, Workload

REGISTRY: dict[str, Family] = {
    f.name: f
    for f in (
        mlp.FAMILY,
        conv_layer.FAMILY,
        pooling.FAMILY,
        resnet.FAMILY,
        decoder.DECODE,
        decoder.PREFILL,
        moe.LAYER,
        moe.DECODE,
        moe.PREFILL,
        ffn.FAMILY,
    )
}


def register(family: Family) -> None:
    """Adds a family defined outside batchlab (see --family_modules)."""
    REGISTRY[family.name] = family


def import_family_modules(modules) -> None:
    """Imports user modules whose import calls `register`."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"--family_modules: cannot import {name!r} ({e})") from None


def get(name: str) -> Family:
    """The family called `name`, or a ConfigError listing the known ones."""
    if name not in REGISTRY:
        raise ConfigError(f"--model={name}: unknown model; allowed are {', '.join(REGISTRY)}")
    return REGISTRY[name]


__all__ = ["Cost", "Family", "Param", "Point", "Workload", "REGISTRY", "get", "register"]
