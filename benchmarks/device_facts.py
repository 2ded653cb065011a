"""What a device is and what it does, in under a minute: the first step of
benchmarks/device_run.sh.

  python benchmarks/device_facts.py OUT.json [--budget=device|tiny]

device_kind, its datasheet row, memory_stats(); a square matmul in float32 at default and
highest precision and in bfloat16 (8192 on an accelerator, 2048 on a CPU, 256 tiny); a
streaming scale over 64 MiB and over 1 GiB (256 MiB on a CPU, 4 MiB tiny); chains of
1, 8 and 64 tiny dependent matmuls, whose slope is the cost of one more kernel.
"""

import json
import sys
import time

import jax
import jax.numpy as jnp

from batchlab import hardware, kernels, timing

SPEC = timing.TimingSpec(target_spread=0.05, time_budget_s=0.3, min_reps=5, warmup_reps=3)


def _median(fn, *args) -> float:
    compiled = timing.compile_ahead(fn, args).compiled
    return timing.time_calls(lambda i: jax.block_until_ready(compiled(*args)), SPEC).median_s


def facts(budget: str) -> dict:
    device = jax.local_devices()[0]
    spec = hardware.lookup(device.device_kind)
    accelerator = device.platform != "cpu"
    n = 256 if budget == "tiny" else (8192 if accelerator else 2048)
    key = jax.random.PRNGKey(0)
    out = {
        "device_kind": device.device_kind,
        "platform": device.platform,
        "datasheet_row": spec.key if spec else None,
        "memory_stats": device.memory_stats() or {},
        "jax": jax.__version__,
    }
    matmuls = {}
    for label, dtype, precision in (
        ("float32 default", jnp.float32, jax.lax.Precision.DEFAULT),
        ("float32 highest", jnp.float32, jax.lax.Precision.HIGHEST),
        ("bfloat16", jnp.bfloat16, jax.lax.Precision.DEFAULT),
    ):
        a = jax.random.normal(key, (n, n), dtype)
        b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype)
        t = _median(lambda a, b, p=precision: jnp.matmul(a, b, precision=p), a, b)
        matmuls[label] = {"n": n, "seconds": t, "flops_per_s": 2 * n**3 / t}
    out["matmul"] = matmuls
    sizes = (2**22, 2**22) if budget == "tiny" else (2**26, 2**30 if accelerator else 2**28)
    streams = {}
    for nbytes in sizes:
        x = jnp.ones((nbytes // 4,), jnp.float32)
        t = _median(lambda x: x * 1.0001, x)
        streams[f"{nbytes // 2**20} MiB"] = {"seconds": t, "bytes_per_s": 2 * nbytes / t}
    out["stream"] = streams
    x, w = jnp.ones((8, 8)), jnp.ones((8, 8)) * 0.1
    chains = {}
    for length in (1, 8, 64):

        def chain(x, w, length=length):
            for _ in range(length):
                x = jnp.tanh(x @ w)
            return x

        compiled = timing.compile_ahead(chain, (x, w)).compiled
        count = kernels.totals(kernels.of_compiled(compiled))["kernels"]
        chains[str(length)] = {"kernels": count, "seconds": _median(chain, x, w)}
    first, last = chains["1"], chains["64"]
    out["chain"] = chains
    out["per_kernel_s"] = (last["seconds"] - first["seconds"]) / (
        last["kernels"] - first["kernels"]
    )
    return out


def main(argv: list[str]) -> None:
    path = argv[0]
    budget = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--budget=")), "device")
    t0 = time.perf_counter()
    found = facts(budget) | {"wall_s": time.perf_counter() - t0}
    with open(path, "w") as f:
        json.dump(found, f, indent=1)
    print(json.dumps(found, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
