"""MoE families: one MoE FFN layer ("moe_layer"), and the MoE decoder's decode step
("moe_decode") and prefill ("moe_prefill") (REFERENCE 2.7, 5).

Cost: batchlab.moe.cost (experts touched, then all experts read, then compute). The
batch of moe_layer is tokens (one routing group); the decoders' group is batch·S tokens.
Each record gets `metrics`: the balance metrics of every MoE layer on the point's own
inputs (batchlab.moe.balance; the sequence-wise loss per prompt for prefill, over the
whole group for moe_layer and a decode step, whose B tokens are one per sequence) and
the dispatch used, with the time of each candidate when it was chosen by measurement
(--dispatches=auto: batchlab.autotune, each candidate timed as the sweep times the point).
The weights hold the experts in the chosen dispatch's layout (stacked for ragged and
sorted_gather), built here, outside the timed call. Shared experts (--shared_experts) run
on every token of all three; under expert parallelism (moe_layer with an "expert" axis)
they and deepseek_v3's group limit and scale are refused, since
batchlab.moe.expert_parallel runs neither yet.

moe_layer also takes what the routing comparison (experiments.routing) varies: a logit
skew s, which adds s·(2e/(E−1) − 1) to expert e's logit (a router biased on purpose, its
last expert favoured); a token mean, the scale of a direction every token shares; and
the router "uniform", token choice on random logits (router weights zero, a normal draw
per token and expert): the balanced baseline. Tokens and router weights come from the
point's key, which folds in only the seed and the batch, so every router at a batch
sees the same ones. The offset reaches the layer as a B×E input only when it is not
zero (its add is left out of the cost, like the softmax).
"""

import jax
import jax.numpy as jnp
import numpy as np

import batchlab.workloads.decoder as dec_wl
import batchlab.workloads.ffn as ffn_wl
from batchlab import autotune, distributed
from batchlab import router_checkpoint as rc
from batchlab.errors import ConfigError
from batchlab.models import decoder as dec
from batchlab.models import moe as mm
from batchlab.moe import balance, dispatch, expert_parallel, routing
from batchlab.moe import cost as moecost
from batchlab.numerics import Numerics
from batchlab.workloads.base import Cost, Family, Param, Point, Workload

UNIFORM = "uniform"  # token choice on random logits: the balanced baseline (moe_layer only)
MOE_PARAMS = (
    Param("experts", "experts", int, (8,), "Experts E in each MoE layer.", minimum=1),
    Param("top_k", "top_ks", int, (2,), "Experts per token k (top-k).", minimum=1),
    Param(
        "router",
        "routers",
        str,
        ("token_choice",),
        "token_choice (top-k with a capacity), dropless (top-k, nothing dropped), "
        "expert_choice (each expert takes its top C tokens; not causal, so not for "
        "decoding), deepseek_v3 (DeepSeek-V3: sigmoid scores, top-k inside the best "
        "--top_groups of --expert_groups, gates normalised over the selected times "
        "--route_scales, nothing dropped), or uniform (moe_layer only: token choice on "
        "random logits, each token's k experts picked at random; the balanced baseline).",
        choices=(*routing.ROUTERS, UNIFORM),
    ),
    Param(
        "capacity_factor",
        "capacity_factors",
        float,
        (1.0,),
        "Slots per expert C = ceil(cf·k·B/E) for B tokens in a group (> 0).",
    ),
    Param(
        "priority",
        "priorities",
        str,
        ("choice",),
        "Who gets a slot first: all first choices in token order (choice), or by router "
        "confidence (batch-prioritized routing; not causal, so not for decoding).",
        choices=routing.PRIORITIES,
    ),
    Param(
        "dispatch",
        "dispatches",
        str,
        ("auto",),
        "slots (gather/scatter, E×C), sorted (exact grouped matmul), ragged (lax.ragged_dot), "
        "sorted_gather (sorted, in whole blocks, with no per-expert conditional), or auto: "
        "the fastest of them, measured at each point (sorted_gather on GPU/TPU only).",
        choices=dispatch.DISPATCHES,
    ),
    Param(
        "shared_experts",
        "shared_experts",
        int,
        (0,),
        "Shared experts every token runs through besides its routed ones, each of the "
        "routed experts' size (DeepSeek-V3: 1); counted in the cost and the balance metrics.",
        minimum=0,
    ),
    Param(
        "expert_groups",
        "expert_groups",
        int,
        (1,),
        "deepseek_v3: the experts in this many equal groups; a token picks its top-k inside "
        "its --top_groups best groups (a group's score: its two best scores) (1: no limit).",
        minimum=1,
    ),
    Param(
        "top_groups",
        "top_groups",
        int,
        (1,),
        "deepseek_v3: groups a token may pick from, at most --expert_groups.",
        minimum=1,
    ),
    Param(
        "route_scale",
        "route_scales",
        float,
        (1.0,),
        "deepseek_v3: the combine weights (selected scores normalised to sum 1) times this "
        "(DeepSeek-V3: 2.5); > 0.",
    ),
    Param(
        "router_checkpoint",
        "router_checkpoints",
        str,
        ("",),
        "A router trained by experiments.train_router (its OUT_DIR/<method>): its router "
        "weights and selection bias replace the random ones; empty for a random router.",
    ),
)
# (flag, parameter, default) of what only deepseek_v3 uses.
DEEPSEEK_ONLY = (
    ("expert_groups", "expert_groups", 1),
    ("top_groups", "top_groups", 1),
    ("route_scales", "route_scale", 1.0),
)
_DECODER = {p.name: p for p in dec_wl.MODEL_PARAMS}
ROUTING_GROUP = Param(
    "routing_group",
    "routing_groups",
    str,
    ("batch",),
    "Under --mesh with an expert axis: route the whole batch as one group, exactly as one "
    "device does (batch), or each device's tokens as their own group, GShard-style "
    "(device). On one device both are the batch.",
    choices=expert_parallel.GROUPS,
)
SKEW = Param(
    "skew",
    "skews",
    float,
    (0.0,),
    "Logit skew s: expert e's logit gets s·(2e/(E−1) − 1), a router biased on purpose "
    "toward its last experts (0: none).",
)
TOKEN_MEAN = Param(
    "token_mean",
    "token_means",
    float,
    (0.0,),
    "Scale of a direction every token shares, as hidden states share one (0: isotropic "
    "tokens); alone it biases a random router.",
)
LAYER_PARAMS = (
    (_DECODER["width"], _DECODER["ffn"], _DECODER["ffn_kind"])
    + MOE_PARAMS
    + (ROUTING_GROUP, SKEW, TOKEN_MEAN)
)
EVERY = Param(
    "moe_every",
    "moe_every",
    int,
    (2,),
    "The FFN of every N-th layer is an MoE (layers N-1, 2N-1, ...); 1: every layer.",
    minimum=1,
)


def moe_config(point: Point, chosen_dispatch: str | None = None) -> mm.MoEConfig:
    """The layer's routing and dispatch; "uniform" routes as token choice (on the random
    logits that build_layer gives it)."""
    return mm.MoEConfig(
        experts=point["experts"],
        top_k=point["top_k"],
        router="token_choice" if point["router"] == UNIFORM else point["router"],
        capacity_factor=point["capacity_factor"],
        priority=point["priority"],
        dispatch=chosen_dispatch or point["dispatch"],
        groups=point["expert_groups"],
        top_groups=point["top_groups"],
        route_scale=point["route_scale"],
        shared_experts=point["shared_experts"],
    )


def validate_moe(point: Point) -> None:
    """Cross-parameter rules; each error names its flag."""
    if point["capacity_factor"] <= 0:
        raise ConfigError(
            f"--capacity_factors: {point['capacity_factor']} is not allowed; the capacity "
            "factor must be > 0 (C = ceil(cf·k·B/E) slots per expert)"
        )
    if point["top_k"] > point["experts"]:
        raise ConfigError(
            f"--top_ks: top-k {point['top_k']} is larger than the number of experts "
            f"{point['experts']} (--experts)"
        )
    if point["router_checkpoint"]:
        rc.check_router_fits(
            point["router_checkpoint"], point["width"], point["experts"], "--router_checkpoints"
        )
    _validate_groups(point)


def _validate_groups(point: Point) -> None:
    """deepseek_v3's group limit and scale: its own, and consistent with E and k."""
    e, k, g, top = point["experts"], point["top_k"], point["expert_groups"], point["top_groups"]
    if point["route_scale"] <= 0:
        raise ConfigError(f"--route_scales: {point['route_scale']} is not allowed; must be > 0")
    if point["router"] != "deepseek_v3":
        for flag, name, default in DEEPSEEK_ONLY:
            if point[name] != default:
                raise ConfigError(
                    f"--{flag}: {point[name]} is deepseek_v3's (--routers=deepseek_v3); with "
                    f"--routers={point['router']} leave it at {default}"
                )
        return
    if e % g:
        raise ConfigError(
            f"--expert_groups: {e} experts (--experts) do not split into {g} equal groups"
        )
    if top > g:
        raise ConfigError(f"--top_groups: {top} is more than the {g} groups (--expert_groups)")
    if k > top * (e // g):
        raise ConfigError(
            f"--top_groups: top-k {k} (--top_ks) is more than the {top * (e // g)} experts of "
            f"{top} group(s) of {e // g}; raise --top_groups"
        )


def _choose_dispatch(point, params, bias_E, inputs, numerics) -> tuple[str, dict]:
    """The point's dispatch and what to record of the choice: when it is "auto", each
    candidate on this platform (dispatch.candidates) timed on the layer as the sweep will
    time the point (batchlab.autotune), with its experts in its own layout, built before
    timing (models.moe.for_dispatch); `inputs` are x_BxD and maybe a logit offset."""
    if point["dispatch"] != "auto":
        return point["dispatch"], {"chosen": point["dispatch"]}
    platform = next(iter(inputs[0].devices())).platform

    def candidate(name):
        moe = moe_config(point, name)

        def fn(w, x, o=None):
            return mm.moe_apply(w["params"], w["bias"], x, moe, numerics.lax_precision, o)[0]

        return fn, {"params": mm.for_dispatch(params, name), "bias": bias_E}

    names = dispatch.candidates(platform)
    return autotune.fastest({name: candidate(name) for name in names}, tuple(inputs))


def _load_router(point, params_list, balance_list):
    """Puts a trained router into each MoE layer's variables (in place, by dict)."""
    if not point["router_checkpoint"]:
        return None
    tcfg, router, bias = rc.load_router(point["router_checkpoint"], "--router_checkpoints")
    for p, b in zip(params_list, balance_list):
        p["router"], b["bias"] = router.astype(p["router"].dtype), bias
    return tcfg


def _run_fraction(point: Point, chosen: str, ms: list[dict], tokens: int) -> float:
    """How much of the dispatch's conditional work runs, over the MoE layers' loads."""
    e, k = point["experts"], point["top_k"]

    def copies(m):
        return m["capacity"] * e if point["router"] == "expert_choice" else tokens * k

    fractions = [dispatch.run_fraction(chosen, m["load_after"], tokens, copies(m)) for m in ms]
    return float(np.mean(fractions)) if fractions else 1.0


def _balance_metrics(routings_fn, *args, point: Point, sequence: int | None = None) -> list[dict]:
    """Balance metrics of each Routing that `routings_fn(*args)` returns (one compile);
    `sequence`: tokens per sequence for the sequence-wise loss (None: the whole group)."""
    shared = point["shared_experts"]
    ms = jax.jit(lambda *a: [balance.metrics(r, sequence, shared) for r in routings_fn(*a)])(*args)
    return [balance.to_host(m) for m in ms]


# ---- one MoE layer -------------------------------------------------------------------------


def layer_cost(point: Point, batch: int, numerics: Numerics) -> Cost:
    return moecost.layer_cost(point, batch, numerics)


def validate_layer(point: Point) -> None:
    validate_moe(point)
    if point["router_checkpoint"] and point["token_mean"]:
        raise ConfigError(
            f"--token_means: {point['token_mean']} with --router_checkpoints: a trained "
            "router's tokens come from its training task, which has its own shared "
            "direction; leave --token_means at 0"
        )


def _logit_offset(point: Point, batch: int, key):
    """The B×E logit offset of the point (module docstring), or None when it is zero."""
    e = point["experts"]
    if not point["skew"] and point["router"] != UNIFORM:
        return None
    ramp_E = 2 * jnp.arange(e, dtype=jnp.float32) / max(1, e - 1) - 1
    offset_BxE = jnp.broadcast_to(point["skew"] * ramp_E, (batch, e))
    if point["router"] == UNIFORM:
        offset_BxE = offset_BxE + jax.random.normal(jax.random.fold_in(key, 3), (batch, e))
    return offset_BxE


def build_layer(point: Point, batch: int, numerics: Numerics, key) -> Workload:
    """The point's tokens (or the training task's, with a trained router) through one MoE
    FFN, with the logit offset of its skew or of random picks (module docstring)."""
    cfg = dec.DecoderConfig(
        width=point["width"],
        ffn=point["ffn"],
        gated_ffn=point["ffn_kind"] == "gated",
        dtype=numerics.jnp_dtype,
        precision=numerics.lax_precision,
    )
    k_init, k_x = jax.random.split(key)
    variables = jax.jit(mm.MoEFFN(cfg, moe_config(point, "slots")).init)(
        k_init, jnp.zeros((1, 1, cfg.width), cfg.dtype)
    )
    params, bal = dict(variables["params"]), dict(variables["balance"])
    tcfg = _load_router(point, [params], [bal])
    if tcfg is None:
        x_BxD = ffn_wl.tokens(key, batch, cfg.width, cfg.dtype, point["token_mean"])
    else:
        x_BxD = rc.sample(rc.task(tcfg), k_x, batch)[0].astype(cfg.dtype)
    if point["router"] == UNIFORM:  # the picks come from the offset's random logits alone
        params["router"] = jnp.zeros_like(params["router"])
    offset = _logit_offset(point, batch, key)
    inputs = (x_BxD,) if offset is None else (x_BxD, offset)
    chosen, dispatch_info = _choose_dispatch(point, params, bal["bias"], inputs, numerics)
    moe = moe_config(point, chosen)
    # The experts as the chosen dispatch takes them (stacked for ragged), built here, once.
    weights = {"params": mm.for_dispatch(params, chosen), "balance": bal}

    def fn(w, x, o=None):
        return mm.moe_apply(w["params"], w["balance"]["bias"], x, moe, cfg.precision, o)[0]

    ms = _balance_metrics(
        lambda w, x, o=None: [mm.moe_apply(w["params"], w["balance"]["bias"], x, moe, None, o)[1]],
        weights,
        *inputs,
        point=point,
    )
    return Workload(
        fn=fn,
        weights=weights,
        inputs=inputs,
        cost=layer_cost(point | {"dispatch": chosen}, batch, numerics),
        metrics={"tokens": batch, "dispatch": dispatch_info, "balance": ms},
        resolved={"dispatch": chosen},
        branch_fraction=_run_fraction(point, chosen, ms, batch),
        place=lambda mesh: _place_layer(point, batch, numerics, mesh, weights, inputs),
    )


def _expert_parallel(point, axes) -> bool:
    """Expert parallelism when the mesh has an "expert" axis or each device is its own
    routing group (batchlab.moe.expert_parallel); else the default layout (GSPMD)."""
    return expert_parallel.EXPERT in axes or point["routing_group"] == "device"


def _check_expert_parallel(point: Point) -> None:
    """What batchlab.moe.expert_parallel does not run yet: shared experts and
    deepseek_v3's group limit and scale (its routing call takes neither)."""
    if point["shared_experts"]:
        raise ConfigError(
            "--shared_experts: the expert-parallel layer has no shared experts yet; run "
            "them on one device, or along --mesh=data:N"
        )
    for flag, name, default in DEEPSEEK_ONLY:
        if point[name] != default:
            raise ConfigError(
                f"--{flag}: the expert-parallel layer routes without deepseek_v3's group "
                f"limit and scale yet; leave --{flag} at {default} under an expert axis"
            )


def layer_mesh_cost(point: Point, batch: int, numerics: Numerics, spec) -> Cost | None:
    """One device's share under expert parallelism; None for the default layout."""
    axes = dict(spec)
    if not _expert_parallel(point, axes):
        return None
    _check_expert_parallel(point)
    n_e = axes.get(expert_parallel.EXPERT, 1)
    return moecost.expert_parallel_cost(point, batch, numerics, distributed.size(spec), n_e)


def _place_layer(point, batch, numerics, mesh, weights, inputs):
    """The expert-parallel layout (see _expert_parallel), or None for the default."""
    group = point["routing_group"]
    if not _expert_parallel(point, mesh.axis_names):
        return None
    _check_expert_parallel(point)
    with_offset = len(inputs) == 2
    fn = expert_parallel.layer(
        mesh, moe_config(point), group, numerics.lax_precision, with_offset=with_offset
    )
    sh = expert_parallel.shardings(mesh)
    params = weights["params"]
    placed = {
        "params": {
            "router": distributed.put(params["router"], sh["router"]),
            "experts": distributed.put(
                expert_parallel.stack_experts(params["experts"]), sh["experts"]
            ),
        },
        "bias": distributed.put(weights["balance"]["bias"], sh["bias"]),
    }
    dispatch_info = {
        "chosen": "all_to_all",
        "routing_group": group,
        "buffer_capacity": moecost.ep_buffer_capacity(point, batch, mesh.size),
        # "balance" stays that of the whole batch as one group, for either group.
    }
    return distributed.Placed(
        fn=lambda w, *xs: fn(w["params"], w["bias"], *xs),
        weights=placed,
        inputs=tuple(distributed.put(a, sh["tokens"]) for a in inputs),
        specs={name: str(s.spec) for name, s in sh.items()} | {"routing_group": group},
        metrics={"dispatch": dispatch_info},
    )


# ---- the MoE decoder -----------------------------------------------------------------------


def _scaled_sum(base: Cost, n: int, plus: Cost, minus: Cost) -> Cost:
    """base + n·(plus − minus), field by field."""
    fields = ("flops", "weight_bytes", "activation_bytes", "state_bytes")
    return Cost(*(getattr(base, f) + n * (getattr(plus, f) - getattr(minus, f)) for f in fields))


def decoder_cost(point: Point, batch: int, new_tokens: int, cache_len: int, numerics) -> Cost:
    """The dense decoder's cost (REFERENCE 2.4-2.5) with each MoE layer's dense FFN
    replaced by an MoE FFN over the batch·S tokens of the call (REFERENCE 2.7)."""
    base = dec_wl.cost(point, batch, new_tokens, cache_len, 1, numerics)
    n = batch * new_tokens
    layers = len(mm.moe_layers(point["depth"], point["moe_every"]))
    return _scaled_sum(
        base,
        layers,
        moecost.layer_cost(point, n, numerics),
        moecost.dense_ffn_cost(point, n, numerics),
    )


def model_of(point: Point, numerics: Numerics, chosen_dispatch: str = "slots"):
    cfg = dec_wl.model_config(point, numerics)
    moe = moe_config(point, chosen_dispatch)
    return mm.moe_decoder(cfg, moe, point["moe_every"]), moe


def validate_decoder(point: Point) -> None:
    if point["router"] == UNIFORM:
        raise ConfigError(
            "--routers=uniform: random picks are the balanced baseline of one MoE layer "
            "(--model=moe_layer, experiments.routing); a decoder routes with token_choice, "
            "dropless or (to prefill) expert_choice"
        )
    validate_moe(point)
    if not mm.moe_layers(point["depth"], point["moe_every"]):
        raise ConfigError(
            f"--moe_every: {point['moe_every']} is more than --depths {point['depth']}, so no "
            "layer would be an MoE"
        )


def _build_decoder(point, numerics, key, tokens_BxS, positions_BxS, cache):
    """Shared by decode and prefill: weights (a trained router if asked), the dispatch,
    and the balance metrics of every MoE layer on this call's inputs."""
    model, _ = model_of(point, numerics)
    weights = jax.tree.map(lambda a: a, mm.init(model, key))  # fresh, mutable dicts
    names = [f"block_{i}" for i in mm.moe_layers(point["depth"], point["moe_every"])]
    params = [weights["params"][n]["ffn"] for n in names]
    biases = [weights["balance"][n]["ffn"] for n in names]
    _load_router(point, params, biases)
    n = tokens_BxS.size
    x_BxD = jax.random.normal(jax.random.fold_in(key, 7), (n, point["width"]), numerics.jnp_dtype)
    chosen, dispatch_info = _choose_dispatch(
        point, params[0], biases[0]["bias"], (x_BxD,), numerics
    )
    model, moe = model_of(point, numerics, chosen)
    weights = mm.for_dispatch(weights, chosen)  # the experts as the chosen dispatch takes them
    ms = _balance_metrics(
        lambda *a: mm.routings(model, *a),
        weights,
        tokens_BxS,
        positions_BxS,
        cache,
        point=point,
        sequence=tokens_BxS.shape[1] if tokens_BxS.shape[1] > 1 else None,
    )
    metrics = {"tokens": n, "dispatch": dispatch_info, "balance": ms}
    metrics["run_fraction"] = _run_fraction(point, chosen, ms, n)
    return model, moe, weights, metrics, chosen


def decode_cost(point: Point, batch: int, numerics: Numerics) -> Cost:
    return decoder_cost(point, batch, 1, point["context"] + 1, numerics)


def validate_decode(point: Point) -> None:
    if point["router"] == "expert_choice":
        raise ConfigError(
            f"--routers=expert_choice: {mm.NOT_CAUSAL}; use it with --model=moe_prefill or "
            "moe_layer, or decode with token_choice or dropless"
        )
    if mm.not_causal(point["router"], point["priority"]):
        raise ConfigError(
            f"--priorities=confidence: {mm.BPR_NOT_CAUSAL}; use it with --model=moe_prefill "
            "or moe_layer, or decode with --priorities=choice (or --routers=dropless, which "
            "drops nothing)"
        )
    dec_wl.validate_decode(point)
    validate_decoder(point)


def build_decode(point: Point, batch: int, numerics: Numerics, key) -> Workload:
    """As the dense decode step: a random cache, one new token per sequence, donated cache."""
    cfg = dec_wl.model_config(point, numerics)
    k_init, k_inputs = jax.random.split(key)
    cache, tokens_B, positions_B = dec_wl.decode_inputs(cfg, point["context"], batch, k_inputs)
    model, moe, weights, metrics, chosen = _build_decoder(
        point, numerics, k_init, tokens_B[:, None], positions_B[:, None], cache
    )
    return Workload(
        fn=lambda p, c, tok, pos: mm.decode_step(model, moe, p, c, tok, pos),
        weights=weights,
        inputs=(cache, tokens_B, positions_B),
        cost=decode_cost(point | {"dispatch": chosen}, batch, numerics),
        donate_argnums=(1,),
        next_inputs=lambda out, inputs: (out[0], *inputs[1:]),
        metrics=metrics,
        resolved={"dispatch": chosen},
        branch_fraction=metrics["run_fraction"],
    )


def prefill_cost(point: Point, batch: int, numerics: Numerics) -> Cost:
    s = point["prompt_len"]
    return decoder_cost(point, batch, s, s, numerics)


def validate_prefill(point: Point) -> None:
    dec_wl.validate_prefill(point)
    validate_decoder(point)


def build_prefill(point: Point, batch: int, numerics: Numerics, key) -> Workload:
    """A prompt of S tokens per sequence; expert choice allowed: the whole prompt is known."""
    cfg = dec_wl.model_config(point, numerics)
    k_init, k_tok = jax.random.split(key)
    s = point["prompt_len"]
    tokens_BxS = jax.random.randint(k_tok, (batch, s), 0, cfg.vocab)
    positions_BxS = jnp.broadcast_to(jnp.arange(s), (batch, s))
    cache = dec.init_cache(cfg, batch, s)
    model, _, weights, metrics, chosen = _build_decoder(
        point, numerics, k_init, tokens_BxS, positions_BxS, cache
    )
    return Workload(
        fn=lambda p, tok: dec.prefill(model, p, tok),
        weights=weights,
        inputs=(tokens_BxS,),
        cost=prefill_cost(point | {"dispatch": chosen}, batch, numerics),
        metrics=metrics,
        resolved={"dispatch": chosen},
        branch_fraction=metrics["run_fraction"],
    )


# Small points for the tests' cost checks; the slots dispatch, whose padded FLOPs the cost
# model counts (XLA counts every expert's branch of "sorted" and dense work for "ragged").
_SMALL = {"experts": 4, "top_k": 2, "dispatch": "slots", "moe_every": 1}

LAYER = Family(
    name="moe_layer",
    description="one MoE FFN layer (router, dispatch, experts, combine) over a group of tokens",
    params=LAYER_PARAMS,
    cost=layer_cost,
    build=build_layer,
    validate=validate_layer,
    batch_unit="tokens",
    mesh_axes=("data", expert_parallel.EXPERT),
    axis_params={expert_parallel.EXPERT: "experts"},
    mesh_cost=layer_mesh_cost,
    examples=(
        {"width": 32, "ffn": 48, "experts": 4, "top_k": 2, "dispatch": "slots"},
        {"width": 32, "ffn": 48, "experts": 4, "top_k": 2, "dispatch": "slots"}
        | {"router": "expert_choice"},
    ),
)

DECODE = Family(
    name="moe_decode",
    description="one decode step of a decoder whose FFN is an MoE every N layers",
    params=dec_wl.MODEL_PARAMS + MOE_PARAMS + (EVERY, dec_wl.DECODE.param("context")),
    cost=decode_cost,
    build=build_decode,
    validate=validate_decode,
    batch_unit="sequences",
    examples=(
        dec_wl.SMALL_MODEL | _SMALL | {"context": 15},
        # top-2 of 2 experts: dropless computes every row it counts, and reads every expert.
        dec_wl.SMALL_MODEL | _SMALL | {"experts": 2, "router": "dropless", "context": 7},
    ),
)

PREFILL = Family(
    name="moe_prefill",
    description="a prompt through a decoder whose FFN is an MoE every N layers",
    params=dec_wl.MODEL_PARAMS + MOE_PARAMS + (EVERY, dec_wl.PREFILL.param("prompt_len")),
    cost=prefill_cost,
    build=build_prefill,
    validate=validate_prefill,
    batch_unit="sequences",
    plot_axes=("prompt_len",),
    examples=(
        dec_wl.SMALL_MODEL | _SMALL | {"router": "expert_choice", "prompt_len": 8},
        dec_wl.SMALL_MODEL | _SMALL | {"priority": "confidence", "prompt_len": 6},
    ),
)
