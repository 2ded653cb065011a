"""Balance metrics and router losses (REFERENCE 5), as pure functions of a `Routing`.

Load before capacity counts each token's own top-k (what the router asked for; for
expert choice, what token choice would have picked); load after counts the copies each
expert actually ran. CV, MaxVio and entropy are of the load before capacity, where a
biased gate shows; `max_vio_after` is what a capacity or expert choice leaves of it.
These are the routed experts'. Shared experts (DeepSeek-V3), which every token uses,
are balanced by construction: `load_shared` gives each one's rows (every token), and
`rows_per_token` counts the rows a token costs, routed copies run plus shared experts.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from batchlab.moe.routing import Routing


def load_balancing_loss(probs_BxE, chosen_Bxk):
    """Switch/GShard: E·Σ_e f_e·P_e, f_e the fraction of tokens whose top-k includes e
    (before capacity drops), P_e the mean router probability. Balanced minimum: k.
    Multiply by α ≈ 0.01 in training. Gradients flow through P_e only."""
    b, e = probs_BxE.shape
    f_E = jnp.zeros((e,), jnp.float32).at[chosen_Bxk.reshape(-1)].add(1.0) / b
    return e * jnp.sum(jax.lax.stop_gradient(f_E) * probs_BxE.mean(0))


def sequence_balance_loss(probs_BxE, chosen_Bxk, sequence: int | None = None):
    """DeepSeek-V3's sequence-wise balance loss, per sequence of T tokens, averaged over
    the group's B/T sequences: Σ_e f_e·P_e with f_e = E/(k·T) · (tokens of the sequence
    whose top-k includes e) and P_e the sequence's mean of the normalised scores (the
    router's probabilities). Balanced minimum: 1. Multiply by α (DeepSeek-V3: 1e-4).
    `sequence` None: the whole group is one sequence (then it equals the load-balancing
    loss over k). The token rows of one sequence are consecutive (B·S flattened)."""
    b, e = probs_BxE.shape
    k = chosen_Bxk.shape[1]
    t = b if sequence is None else sequence
    if t < 1 or b % t:
        raise ValueError(f"{b} tokens do not split into sequences of {t}")
    n = b // t
    seq_Bxk = jnp.broadcast_to((jnp.arange(b) // t)[:, None], chosen_Bxk.shape)
    count_NxE = jnp.zeros((n, e), jnp.float32).at[seq_Bxk, chosen_Bxk].add(1.0)
    p_NxE = probs_BxE.reshape(n, t, e).mean(1)
    return jnp.mean(jnp.sum(e / (k * t) * count_NxE * p_NxE, axis=-1))


def z_loss(logits_BxE):
    """Router z-loss (ST-MoE): mean over tokens of logsumexp(logits)²; weight 1e-3."""
    return jnp.mean(jax.nn.logsumexp(logits_BxE.astype(jnp.float32), axis=-1) ** 2)


def _pairs(tokens: int, experts: int, token, expert):
    """A BxE 0/1 matrix with a 1 for each (token, expert) pair; expert E is dropped."""
    z = jnp.zeros((tokens, experts), jnp.int32)
    return z.at[token, expert].max(1, mode="drop")


def metrics(r: Routing, sequence: int | None = None, shared: int = 0) -> dict:
    """Every balance metric of one routing, as arrays (jittable). `sequence`: tokens per
    sequence for the sequence-wise loss (None: the group is one); `shared`: the shared
    experts the layer runs on every token besides the routing."""
    b, e = r.probs_BxE.shape
    k = r.chosen_Bxk.shape[1]
    wanted_BxE = _pairs(b, e, jnp.arange(b)[:, None], r.chosen_Bxk)
    served_BxE = _pairs(b, e, r.token_M, r.expert_M)
    before_E = wanted_BxE.sum(0).astype(jnp.float32)
    after_E = served_BxE.sum(0).astype(jnp.float32)
    mean = before_E.mean()
    share_E = before_E / before_E.sum()
    entropy = -jnp.sum(jnp.where(share_E > 0, share_E * jnp.log(share_E), 0.0))
    per_token_B = served_BxE.sum(1)
    return {
        "load_before": before_E,
        "load_after": after_E,
        # Copies of the tokens' own top-k that no expert ran (dropped by a capacity, or not
        # picked by an expert-choice expert), and tokens that no expert ran at all.
        "dropped_fraction": jnp.sum(wanted_BxE * (1 - served_BxE)) / (b * k),
        "unrouted_fraction": jnp.mean(per_token_B == 0),
        "cv": before_E.std() / mean,
        "max_vio": before_E.max() / mean - 1,
        "max_vio_after": after_E.max() / after_E.mean() - 1,
        "entropy": entropy / math.log(e) if e > 1 else jnp.float32(1.0),
        "experts_per_token": jnp.bincount(per_token_B, length=e + 1),
        "confidence": r.probs_BxE.max(-1).mean(),
        "experts_touched": jnp.sum(after_E > 0),
        "capacity": jnp.int32(r.capacity),
        "lb_loss": load_balancing_loss(r.probs_BxE, r.chosen_Bxk),
        "seq_balance_loss": sequence_balance_loss(r.probs_BxE, r.chosen_Bxk, sequence),
        "z_loss": z_loss(r.logits_BxE),
        "shared_experts": jnp.int32(shared),
        "load_shared": jnp.full((shared,), b, jnp.float32),
        "rows_per_token": after_E.sum() / b + shared,
    }


def to_host(m: dict) -> dict:
    """Metrics as plain JSON values: floats, ints, lists."""
    out = {}
    for name, v in m.items():
        a = np.asarray(v)
        if a.ndim:
            out[name] = a.tolist()
        elif np.issubdtype(a.dtype, np.integer):
            out[name] = int(a)
        else:
            out[name] = float(a)
    return out


def expected_uniform_cv(tokens: int, k: int, experts: int) -> float:
    """CV of the load when each token picks k distinct experts uniformly at random: each
    load is Binomial(B, k/E), so CV = sqrt((1 − k/E) / (B·k/E)). A router whose CV is well
    above this is biased, not just unlucky (claim C9)."""
    p = k / experts
    return math.sqrt((1 - p) / (tokens * p)) if p < 1 else 0.0


def uniform_cv_null(
    tokens: int, k: int, experts: int, layers: int = 1, trials: int = 2000, seed: int = 0
) -> np.ndarray:
    """The null model of claim C9, by simulation: sorted CVs of the load (averaged over
    `layers` independent layers) when each of `tokens` tokens picks k distinct experts
    uniformly at random. A measured CV above its 99th percentile is biased at p < 0.01."""
    rng = np.random.default_rng(seed)
    cvs = np.empty(trials)
    chunk = max(1, 2**22 // max(1, tokens * experts * layers))
    for start in range(0, trials, chunk):
        n = min(chunk, trials - start)
        picks = rng.random((n, layers, tokens, experts)).argpartition(k - 1, axis=-1)[..., :k]
        base = (np.arange(n * layers) * experts).reshape(n, layers, 1, 1)
        load = np.bincount((picks + base).ravel(), minlength=n * layers * experts)
        load = load.reshape(n, layers, experts)
        mean = load.mean(-1)
        cvs[start : start + n] = (load.std(-1) / mean).mean(-1)
    return np.sort(cvs)
