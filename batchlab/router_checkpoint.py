"""A trained router as a sweep loads it: the training config, its synthetic task, and the
router weights and selection bias of its latest Orbax checkpoint.

Below batchlab.workloads (workloads/moe.py loads a router with `--router_checkpoints`)
and below batchlab.train (which trains and saves them): it imports the models, the MoE
kernels, orbax and optax, and nothing that runs or records anything.

A run directory OUT_DIR/<method> holds config.json ({"fingerprint": ..., "config":
TrainConfig as JSON}, written by batchlab.results.init_dir) and checkpoints/ (Orbax
CheckpointManager, REFERENCE 6). Anything missing or damaged there is a ConfigError
that names the path.
"""

import contextlib
import dataclasses
import json
import logging
import os
import sys

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp

from batchlab.errors import ConfigError
from batchlab.models import decoder as dec
from batchlab.models import moe as mm

METHODS = ("none", "load_balance", "z_loss", "loss_free")
CONFIG, CHECKPOINTS = "config.json", "checkpoints"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run's settings. `fingerprint` leaves out what a rerun may change
    (more steps, other methods, where and when to stop or checkpoint, the evaluation)."""

    out_dir: str
    methods: tuple[str, ...] = METHODS
    width: int = 64
    ffn: int = 128
    ffn_kind: str = "gated"
    experts: int = 8
    top_k: int = 2
    router: str = "token_choice"
    capacity_factor: float = 1.25
    clusters: int = 8
    shared: float = 2.0  # norm of the shared direction, per dimension
    tokens: int = 512  # per step
    steps: int = 300
    learning_rate: float = 3e-3
    lb_weight: float = 1e-2
    z_weight: float = 1e-3
    bias_rate: float = 1e-3
    jitter: float = 0.0
    seed: int = 0
    checkpoint_every: int = 50
    stop_after: int = 0  # stop after this many steps (0: run to the end); tests interruption
    eval_tokens: int = 4096  # fresh task tokens the trained router is evaluated on
    config_name: str = ""  # the named config this run is ("train_router" for claim C9)

    def fingerprint(self, method: str) -> dict:
        d = self.to_json()
        for k in ("out_dir", "methods", "stop_after", "steps", "checkpoint_every", "eval_tokens"):
            d.pop(k)
        return d | {"method": method}

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"methods": list(self.methods)}

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        return cls(**(d | {"methods": tuple(d["methods"])}))


def model_of(cfg: TrainConfig) -> mm.MoEFFN:
    dcfg = dec.DecoderConfig(width=cfg.width, ffn=cfg.ffn, gated_ffn=cfg.ffn_kind == "gated")
    moe = mm.MoEConfig(
        experts=cfg.experts,
        top_k=cfg.top_k,
        router=cfg.router,
        capacity_factor=cfg.capacity_factor,
        dispatch="slots",  # differentiable; "sorted" loops a dynamic number of times
        jitter=cfg.jitter,
    )
    return mm.MoEFFN(dcfg, moe)


def task(cfg: TrainConfig) -> dict:
    """The task's fixed arrays: shared direction, cluster means, per-cluster maps."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(cfg.seed + 1), 3)
    d = cfg.width
    shared = jax.random.normal(k1, (d,))
    return {
        "shared_D": cfg.shared * shared / jnp.sqrt(jnp.mean(shared**2)),
        "means_CxD": jax.random.normal(k2, (cfg.clusters, d)),
        "maps_CxDxD": jax.random.normal(k3, (cfg.clusters, d, d)) / jnp.sqrt(d),
    }


def sample(t: dict, key, tokens: int):
    """(x_BxD, y_BxD): `tokens` tokens of the task and their targets."""
    kc, kn = jax.random.split(key)
    c = jax.random.randint(kc, (tokens,), 0, t["means_CxD"].shape[0])
    x = (
        t["shared_D"]
        + t["means_CxD"][c]
        + 0.3 * jax.random.normal(kn, (tokens, t["shared_D"].size))
    )
    return x, jnp.einsum("bd,bde->be", x, t["maps_CxDxD"][c])


def init_state(cfg: TrainConfig, tx) -> dict:
    """Step 0: fresh weights, optimizer state and a zero selection bias."""
    model = model_of(cfg)
    v = model.init(jax.random.PRNGKey(cfg.seed), jnp.zeros((1, 1, cfg.width)))
    return {
        "step": jnp.int32(0),
        "params": v["params"],
        "opt_state": tx.init(v["params"]),
        "balance": v["balance"],
    }


def optimizer(cfg: TrainConfig):
    return optax.adam(cfg.learning_rate)


def manager(path: str, every: int) -> ocp.CheckpointManager:
    """The Orbax manager of a run's checkpoints/ (synchronous, the last two kept)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(
            f"{path}: not a directory of checkpoints; remove it or choose another --out_dir"
        )
    return ocp.CheckpointManager(
        os.path.abspath(path),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=2, save_interval_steps=every, enable_async_checkpointing=False
        ),
    )


def _run_dir(path: str) -> str:
    path = os.path.normpath(path)
    return os.path.dirname(path) if os.path.basename(path) == CHECKPOINTS else path


def checkpoint_config(path: str, flag: str) -> TrainConfig:
    """The TrainConfig a router checkpoint was trained with; ConfigError naming `flag`
    and the path when it is not one or its config.json cannot be read."""
    run_dir = _run_dir(path)
    cfg_path = os.path.join(run_dir, CONFIG)
    if not os.path.exists(cfg_path) or not os.path.isdir(os.path.join(run_dir, CHECKPOINTS)):
        raise ConfigError(
            f"{flag}={path}: not a router checkpoint (expected {CONFIG} and {CHECKPOINTS}/ "
            "written by experiments.train_router, in OUT_DIR/<method>)"
        )
    try:
        with open(cfg_path) as f:
            d = json.load(f)["config"]
        return dataclasses.replace(TrainConfig.from_json(d), out_dir=os.path.dirname(run_dir))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"{flag}={path}: {cfg_path} is not a router training config ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from None


def check_router_fits(path: str, width: int, experts: int, flag: str) -> TrainConfig:
    """A checkpoint's router must have this model's width and number of experts."""
    cfg = checkpoint_config(path, flag)
    if (cfg.width, cfg.experts) != (width, experts):
        raise ConfigError(
            f"{flag}={path}: trained for width {cfg.width} and {cfg.experts} experts; this "
            f"model has width {width} and {experts} experts"
        )
    return cfg


@contextlib.contextmanager
def _quiet_if_damaged():
    """While a restore runs, and for good once one failed: Orbax's TensorStore reads of a
    damaged checkpoint finish into event loops already closed, which Python prints as
    unraisable 'Event loop is closed' tracebacks (asyncio also logs 'Task exception was
    never retrieved'). The error line says what broke; those say nothing more."""
    previous, log = sys.unraisablehook, logging.getLogger("asyncio")

    def hook(unraisable):
        exc = unraisable.exc_value
        if not (isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)):
            previous(unraisable)

    def drop(r):
        return "exception was never retrieved" not in r.getMessage()

    sys.unraisablehook = hook
    log.addFilter(drop)
    yield
    sys.unraisablehook = previous  # restored: nothing was damaged
    log.removeFilter(drop)


def restore(
    mngr: ocp.CheckpointManager,
    step: int,
    cfg: TrainConfig,
    where: str,
    way_out: str = "delete that step's directory to resume from an earlier checkpoint, or "
    "choose another --out_dir",
) -> dict:
    """The training state saved at `step`; a damaged checkpoint is a ConfigError naming
    `where` (the flag and path, or the run directory), the step's directory and
    `way_out`."""
    abstract = jax.eval_shape(lambda: init_state(cfg, optimizer(cfg)))
    try:
        with _quiet_if_damaged():
            return mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # Orbax raises many kinds for a damaged checkpoint
        first = (str(e).strip().splitlines() or [""])[0][:200]
        step_dir = os.path.join(str(mngr.directory), str(step))
        raise ConfigError(
            f"{where}: the checkpoint of step {step} ({step_dir}) cannot be restored "
            f"({type(e).__name__}: {first}); {way_out}"
        ) from None


def load_router(path: str, flag: str):
    """(TrainConfig, router_DxE, bias_E) of the latest checkpoint under `path`."""
    cfg = checkpoint_config(path, flag)
    mngr = manager(os.path.join(_run_dir(path), CHECKPOINTS), cfg.checkpoint_every)
    try:
        step = mngr.latest_step()
        if step is None:
            raise ConfigError(f"{flag}={path}: holds no checkpoint yet")
        state = restore(
            mngr, step, cfg, f"{flag}={path}", "train it again with experiments.train_router"
        )
    finally:
        mngr.close()
    return cfg, state["params"]["router"], state["balance"]["bias"]
