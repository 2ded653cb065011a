"""Router training on a synthetic task where routing matters, with each balancing method.

The task: tokens x = shared + mu_c + noise from `clusters` clusters, target y = x·A_c, a
different linear map per cluster, so one expert cannot serve every cluster. The shared
direction (anisotropy, as in a transformer's hidden states) makes a fresh router send
most tokens to the same few experts: the imbalance the balancing methods must undo.

Methods (REFERENCE 5): none; load_balance (α·E·Σ f_e·P_e); z_loss (β·mean logsumexp²);
loss_free (the DeepSeek-V3 selection bias, updated by rule after each step). Each method
runs in OUT_DIR/<method>/: config.json, metrics.jsonl (one line per step: losses and
every balance metric) and checkpoints/ (Orbax CheckpointManager, REFERENCE 6). A rerun
resumes from the last checkpoint; batches and jitter come from fold_in(seed, step), so a
resumed run ends with the same parameters as an uninterrupted one.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp

from batchlab import results
from batchlab.errors import ConfigError
from batchlab.models import decoder as dec
from batchlab.models import moe as mm
from batchlab.moe import balance, routing

METHODS = ("none", "load_balance", "z_loss", "loss_free")
CONFIG, METRICS, CHECKPOINTS = "config.json", "metrics.jsonl", "checkpoints"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run's settings; `methods`, `out_dir` and `stop_after` are not part of
    what a checkpoint must match."""

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

    def fingerprint(self, method: str) -> dict:
        d = dataclasses.asdict(self)
        for k in ("out_dir", "methods", "stop_after", "steps", "checkpoint_every"):
            d.pop(k)
        return d | {"method": method}


def validate(cfg: TrainConfig) -> None:
    """Each failure names its flag."""
    for m in cfg.methods:
        if m not in METHODS:
            raise ConfigError(f"--methods: {m!r} is not one of {', '.join(METHODS)}")
    if not cfg.methods:
        raise ConfigError("--methods: give at least one method")
    if cfg.router not in ("token_choice", "dropless"):
        raise ConfigError(
            f"--router={cfg.router}: train token_choice or dropless (expert choice needs no "
            "balancing: it is balanced by construction)"
        )
    if not 1 <= cfg.top_k <= cfg.experts:
        raise ConfigError(
            f"--top_k={cfg.top_k}: must be between 1 and the number of experts {cfg.experts}"
        )
    if cfg.capacity_factor <= 0:
        raise ConfigError(f"--capacity_factor={cfg.capacity_factor}: must be > 0")
    for name in ("width", "ffn", "experts", "clusters", "tokens", "steps", "checkpoint_every"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name}={getattr(cfg, name)}: must be >= 1")
    if cfg.stop_after < 0:
        raise ConfigError(f"--stop_after={cfg.stop_after}: must be >= 0")


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
    """(x_BxD, y_BxD) for one step."""
    kc, kn = jax.random.split(key)
    c = jax.random.randint(kc, (tokens,), 0, t["means_CxD"].shape[0])
    x = (
        t["shared_D"]
        + t["means_CxD"][c]
        + 0.3 * jax.random.normal(kn, (tokens, t["shared_D"].size))
    )
    return x, jnp.einsum("bd,bde->be", x, t["maps_CxDxD"][c])


def init_state(cfg: TrainConfig, tx) -> dict:
    model = model_of(cfg)
    v = model.init(jax.random.PRNGKey(cfg.seed), jnp.zeros((1, 1, cfg.width)))
    return {
        "step": jnp.int32(0),
        "params": v["params"],
        "opt_state": tx.init(v["params"]),
        "balance": v["balance"],
    }


def make_step(cfg: TrainConfig, method: str, tx):
    """state, step index -> (state, metrics of the step's routing)."""
    model, t = model_of(cfg), task(cfg)
    data_key = jax.random.PRNGKey(cfg.seed + 2)

    def step(state, i):
        key = jax.random.fold_in(data_key, i)
        x, y = sample(t, key, cfg.tokens)

        def loss_fn(params):
            pred, inter = model.apply(
                {"params": params, "balance": state["balance"]},
                x[None],
                rngs={"jitter": jax.random.fold_in(key, 1)},
                mutable=["intermediates"],
            )
            r = inter["intermediates"]["routing"][0]
            task_loss = jnp.mean((pred[0] - y) ** 2) / jnp.mean(y**2)
            lb, z = (
                balance.load_balancing_loss(r.probs_BxE, r.chosen_Bxk),
                balance.z_loss(r.logits_BxE),
            )
            loss = task_loss
            if method == "load_balance":
                loss = loss + cfg.lb_weight * lb
            elif method == "z_loss":
                loss = loss + cfg.z_weight * z
            return loss, (task_loss, r)

        (loss, (task_loss, r)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        m = balance.metrics(r)
        bias = state["balance"]["bias"]
        if method == "loss_free":
            bias = routing.update_bias(bias, m["load_before"], cfg.bias_rate)
        new = {
            "step": state["step"] + 1,
            "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state,
            "balance": {"bias": bias},
        }
        return new, m | {"loss": loss, "task_loss": task_loss, "bias": bias}

    return jax.jit(step, donate_argnums=0)


def _manager(path: str, every: int) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.abspath(path),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=2, save_interval_steps=every, enable_async_checkpointing=False
        ),
    )


def _check_dir(cfg: TrainConfig, method: str, run_dir: str) -> None:
    path = os.path.join(run_dir, CONFIG)
    if not os.path.exists(path):
        if os.path.exists(os.path.join(run_dir, CHECKPOINTS)):
            raise ConfigError(f"--out_dir={cfg.out_dir}: {run_dir} has checkpoints but no {CONFIG}")
        return
    with open(path) as f:
        earlier = json.load(f)
    now = cfg.fingerprint(method)
    if earlier != now:
        diff = "; ".join(
            f"{k} {earlier.get(k)!r} there, {now[k]!r} now" for k in now if earlier.get(k) != now[k]
        )
        raise ConfigError(
            f"--out_dir={cfg.out_dir}: {method} holds a run of a different config ({diff}); "
            "choose another --out_dir"
        )


def _trim_metrics(path: str, upto: int) -> None:
    """Keeps the lines of steps <= upto: steps after the last checkpoint are redone."""
    lines = [r for r in results.load(path) if r["step"] <= upto] if os.path.exists(path) else []
    with open(path, "w") as f:
        f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in lines)


def train_method(cfg: TrainConfig, method: str, log=print) -> dict:
    """Trains (or resumes) one method; returns its final state."""
    run_dir = os.path.join(cfg.out_dir, method)
    _check_dir(cfg, method, run_dir)
    os.makedirs(run_dir, exist_ok=True)
    results.write_json_atomic(os.path.join(run_dir, CONFIG), cfg.fingerprint(method))
    tx = optax.adam(cfg.learning_rate)
    state = init_state(cfg, tx)
    mngr = _manager(os.path.join(run_dir, CHECKPOINTS), cfg.checkpoint_every)
    start = mngr.latest_step() or 0
    if start:
        state = mngr.restore(start, args=ocp.args.StandardRestore(state))
        log(f"{method}: resumed from the checkpoint at step {start}")
    metrics_path = os.path.join(run_dir, METRICS)
    _trim_metrics(metrics_path, start)
    step = make_step(cfg, method, tx)
    end = cfg.steps if not cfg.stop_after else min(cfg.steps, cfg.stop_after)
    with open(metrics_path, "a") as f:
        for i in range(start, end):
            state, m = step(state, jnp.int32(i))
            line = {"id": f"{method}/{i + 1}", "status": "ok", "method": method, "step": i + 1}
            f.write(json.dumps(line | balance.to_host(m), sort_keys=True) + "\n")
            if (i + 1) % cfg.checkpoint_every == 0 or i + 1 == cfg.steps:
                f.flush()
                mngr.save(i + 1, args=ocp.args.StandardSave(state), force=i + 1 == cfg.steps)
    mngr.wait_until_finished()
    mngr.close()
    return state


def run(cfg: TrainConfig, log=print) -> dict[str, dict]:
    """Trains every method in turn; {method: final state}."""
    validate(cfg)
    return {m: train_method(cfg, m, log) for m in cfg.methods}


def load_metrics(out_dir: str) -> list[dict]:
    """Every method's metrics lines under OUT_DIR."""
    out = []
    for method in METHODS:
        out += results.load(os.path.join(out_dir, method, METRICS))
    return out


# ---- a trained router in a sweep ----------------------------------------------------------


def _run_dir(path: str) -> str:
    path = os.path.normpath(path)
    return os.path.dirname(path) if os.path.basename(path) == CHECKPOINTS else path


def checkpoint_config(path: str, flag: str) -> TrainConfig:
    """The TrainConfig a router checkpoint was trained with; ConfigError naming `flag`."""
    run_dir = _run_dir(path)
    cfg_path = os.path.join(run_dir, CONFIG)
    if not os.path.exists(cfg_path) or not os.path.isdir(os.path.join(run_dir, CHECKPOINTS)):
        raise ConfigError(
            f"{flag}={path}: not a router checkpoint (expected {CONFIG} and {CHECKPOINTS}/ "
            "written by experiments.train_router, in OUT_DIR/<method>)"
        )
    with open(cfg_path) as f:
        d = json.load(f)
    d.pop("method")
    return TrainConfig(out_dir=os.path.dirname(run_dir), **d)


def check_router_fits(path: str, width: int, experts: int, flag: str) -> TrainConfig:
    """A checkpoint's router must have this model's width and number of experts."""
    cfg = checkpoint_config(path, flag)
    if (cfg.width, cfg.experts) != (width, experts):
        raise ConfigError(
            f"{flag}={path}: trained for width {cfg.width} and {cfg.experts} experts; this "
            f"model has width {width} and {experts} experts"
        )
    return cfg


def load_router(path: str, flag: str):
    """(TrainConfig, router_DxE, bias_E) of the latest checkpoint under `path`."""
    cfg = checkpoint_config(path, flag)
    tx = optax.adam(cfg.learning_rate)
    abstract = jax.eval_shape(lambda: init_state(cfg, tx))
    mngr = _manager(os.path.join(_run_dir(path), CHECKPOINTS), cfg.checkpoint_every)
    step = mngr.latest_step()
    if step is None:
        raise ConfigError(f"{flag}={path}: holds no checkpoint yet")
    state = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    mngr.close()
    return cfg, state["params"]["router"], state["balance"]["bias"]


def summary(records: list[dict], last: int = 20) -> str:
    """Each method's balance and loss, averaged over its last `last` steps."""
    names = ("cv", "max_vio", "dropped_fraction", "entropy", "confidence", "task_loss", "z_loss")
    lines = [f"{'method':<13} {'steps':>6} " + " ".join(f"{n:>16}" for n in names)]
    for method in dict.fromkeys(r["method"] for r in records):
        rs = sorted((r for r in records if r["method"] == method), key=lambda r: r["step"])
        tail = rs[-last:]
        lines.append(
            f"{method:<13} {rs[-1]['step']:>6} "
            + " ".join(f"{sum(r[n] for r in tail) / len(tail):>16.4g}" for n in names)
        )
    return "\n".join(lines)
