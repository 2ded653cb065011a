"""Router training on a synthetic task where routing matters, with each balancing method.

The task (batchlab.router_checkpoint): tokens x = shared + mu_c + noise from `clusters`
clusters, target y = x·A_c, a different linear map per cluster, so one expert cannot
serve every cluster. The shared direction (anisotropy, as in a transformer's hidden
states) makes a fresh router send most tokens to the same few experts: the imbalance the
balancing methods must undo.

Methods (REFERENCE 5): none; load_balance (α·E·Σ f_e·P_e); z_loss (β·mean logsumexp²);
loss_free (the DeepSeek-V3 selection bias, updated by rule after each step). Each method
is a results directory OUT_DIR/<method>: config.json and its fingerprint check
(batchlab.results), results.jsonl (one TRAIN_STEP record per step: losses and every
balance metric; then one ROUTER_EVAL record, the trained router on `eval_tokens` fresh
tokens) and checkpoints/ (Orbax CheckpointManager, REFERENCE 6). A rerun resumes from
the last checkpoint; batches and jitter come from fold_in(seed, step), so a resumed run
ends with the same parameters as an uninterrupted one.
"""

import json
import os
import re

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp

from batchlab import record, results
from batchlab import router_checkpoint as rc
from batchlab.errors import ConfigError
from batchlab.moe import balance, routing
from batchlab.provenance import provenance
from batchlab.router_checkpoint import METHODS, TrainConfig

__all__ = ["METHODS", "TrainConfig", "run", "train_method", "validate"]


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
    for name in (
        "width",
        "ffn",
        "experts",
        "clusters",
        "tokens",
        "steps",
        "checkpoint_every",
        "eval_tokens",
    ):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name}={getattr(cfg, name)}: must be >= 1")
    if cfg.stop_after < 0:
        raise ConfigError(f"--stop_after={cfg.stop_after}: must be >= 0")
    if cfg.config_name and not re.fullmatch(r"[A-Za-z0-9_.-]+", cfg.config_name):
        raise ConfigError(f"--config_name={cfg.config_name}: use letters, digits, '_', '.' and '-'")


def make_step(cfg: TrainConfig, method: str, tx):
    """state, step index -> (state, metrics of the step's routing)."""
    model, t = rc.model_of(cfg), rc.task(cfg)
    data_key = jax.random.PRNGKey(cfg.seed + 2)

    def step(state, i):
        key = jax.random.fold_in(data_key, i)
        x, y = rc.sample(t, key, cfg.tokens)

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


def evaluate(cfg: TrainConfig, state: dict) -> dict:
    """Balance metrics of the trained router (its weights and selection bias, no jitter)
    on `eval_tokens` fresh task tokens. They come from PRNGKey(seed + 3), a key the
    training batches, fold_in(PRNGKey(seed + 2), step), never use."""
    x, _ = rc.sample(rc.task(cfg), jax.random.PRNGKey(cfg.seed + 3), cfg.eval_tokens)

    @jax.jit
    def metrics(router_DxE, bias_E, x_BxD):
        logits = routing.router_logits(x_BxD, router_DxE)
        r = routing.route(logits, cfg.router, cfg.top_k, cfg.capacity_factor, "choice", bias_E)
        return balance.metrics(r)

    m = metrics(state["params"]["router"], state["balance"]["bias"], x)
    return balance.to_host(m)


def eval_params(cfg: TrainConfig) -> dict:
    """The layer a ROUTER_EVAL record describes."""
    keys = ("width", "ffn", "ffn_kind", "experts", "top_k", "router", "capacity_factor")
    return {k: getattr(cfg, k) for k in keys}


def check_dirs(cfg: TrainConfig) -> None:
    """Writes nothing: each method's directory must be writable and hold nothing of
    another config (results.check_dir), nor checkpoints without their config.json."""
    for method in cfg.methods:
        run_dir = os.path.join(cfg.out_dir, method)
        results.check_dir(run_dir, cfg.fingerprint(method))
        has_config = os.path.exists(os.path.join(run_dir, results.CONFIG))
        if not has_config and os.path.exists(os.path.join(run_dir, rc.CHECKPOINTS)):
            raise ConfigError(
                f"--out_dir={run_dir}: has {rc.CHECKPOINTS}/ but no {results.CONFIG}; "
                "choose another --out_dir"
            )


def _trim(path: str, upto: int) -> list[dict]:
    """Keeps the records of steps <= upto (steps after the last checkpoint are redone);
    returns them."""
    kept = [r for r in results.load(path) if r.get("step", 0) <= upto]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in kept)
    os.replace(tmp, path)
    return kept


def train_method(cfg: TrainConfig, method: str, log=print) -> dict:
    """Trains (or resumes) one method, then evaluates it once trained; returns its state."""
    run_dir = os.path.join(cfg.out_dir, method)
    results.init_dir(run_dir, cfg.fingerprint(method), cfg.to_json())
    tx = rc.optimizer(cfg)
    state = rc.init_state(cfg, tx)
    mngr = rc.manager(os.path.join(run_dir, rc.CHECKPOINTS), cfg.checkpoint_every)
    start = mngr.latest_step() or 0
    if start:
        state = rc.restore(mngr, start, cfg, f"--out_dir={run_dir}")
        log(f"{method}: resumed from the checkpoint at step {start}")
    path = os.path.join(run_dir, results.RESULTS)
    kept = _trim(path, start)
    step = make_step(cfg, method, tx)
    end = cfg.steps if not cfg.stop_after else min(cfg.steps, cfg.stop_after)
    device = jax.local_devices()[0]
    # One handle, flushed to disk at each checkpoint: records after the last checkpoint
    # are redone on resume anyway, so a per-step fsync would buy nothing.
    with open(path, "a") as f:
        for i in range(start, end):
            state, m = step(state, jnp.int32(i))
            rec = record.train_step(
                method=method,
                step=i + 1,
                metrics=balance.to_host(m),
                config_name=cfg.config_name,
                provenance=provenance(device),
            )
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            if (i + 1) % cfg.checkpoint_every == 0 or i + 1 == cfg.steps:
                f.flush()
                os.fsync(f.fileno())
                mngr.save(i + 1, args=ocp.args.StandardSave(state), force=i + 1 == cfg.steps)
    mngr.wait_until_finished()
    mngr.close()
    done = int(state["step"])
    evaluated = [r for r in kept if r.get("kind") == record.ROUTER_EVAL]
    fresh = evaluated and (evaluated[-1]["step"], evaluated[-1]["tokens"]) == (
        done,
        cfg.eval_tokens,
    )
    if done == cfg.steps and not fresh:
        results.append(
            path,
            record.router_eval(
                method=method,
                step=done,
                tokens=cfg.eval_tokens,
                params=eval_params(cfg),
                metrics=evaluate(cfg, state),
                config_name=cfg.config_name,
                provenance=provenance(device),
            ),
        )
    return state


def run(cfg: TrainConfig, log=print) -> dict[str, dict]:
    """Checks every method's directory, then trains each in turn; {method: final state}."""
    validate(cfg)
    check_dirs(cfg)
    return {m: train_method(cfg, m, log) for m in cfg.methods}
