"""Switch Transformer <-> transformers' SwitchTransformersForConditionalGeneration (config.json
model_type "switch_transformers"; google/switch-base-8 ... switch-c-2048).

T5 v1.0's tensors (fmjax/hf/t5.py) with each MLP under `layer.{k}.mlp.`: dense blocks
mlp.wi / mlp.wo (fmjax mlp/up, mlp/down), sparse blocks the router mlp.router.classifier.weight
[E, D] (fmjax mlp/router/kernel [D, E]) and per expert j mlp.experts.expert_{j}.wi [F, D] /
.wo [D, F] (slices of fmjax's stacked mlp/experts/up [E, D, F] / down [E, F, D]).

Which blocks are sparse: HF's block i is when i % sparse_step == 1 (or sparse_step == 1), the
step from {encoder,decoder}_sparse_step, else num_layers // num_sparse_*_layers. fmjax makes the
last block of each group of config.model.moe.interval sparse (fmjax/models/transformer.py): the
same blocks for a step of 1 (every MLP) or 2 (every other one, the released models); other
steps, or an encoder step that differs from the decoder's, are refused.

Routing as transformers: float32 softmax over the E router logits, the top-1 expert's output
scaled by its probability (moe.top_k 1, renormalize False), and HF's fixed expert_capacity:
each expert takes at most that many tokens of one sequence, first come in token order, the
rest pass through on the residual only; fmjax's moe.row_capacity is that rule, so an imported
model drops exactly the tokens transformers drops. Export writes expert_capacity =
moe.row_capacity, or model.seq_len for a model without one (nothing dropped in a sequence of
up to seq_len tokens); moe.capacity_factor (per group of tokens, a training setting) has no HF
field. router_z_loss_coef and router_aux_loss_coef are moe.router_z_loss and
moe.load_balance_loss (HF's load-balancing loss is fmjax's E x sum_e f_e p_e); router jitter
is a training-time noise fmjax does not add (exported 0.0).
"""
from __future__ import annotations

from fmjax.hf import mapping, t5
from fmjax.hf.mapping import Stack, linear

FAMILY = "switch"
STEPS = (1, 2)  # HF sparse steps whose sparse blocks are fmjax's (the module docstring)


def sparse_step(hf: dict, side: str) -> int:
    """HF's {side}_sparse_step of config.json, as transformers derives it when absent."""
    if f"{side}_sparse_step" in hf:
        return hf[f"{side}_sparse_step"]
    n = hf["num_layers"] if side == "encoder" else hf.get("num_decoder_layers") or hf["num_layers"]
    sparse = hf.get(f"num_sparse_{side}_layers", 3)
    return n // sparse if sparse > 0 else n


def config_from_hf(hf: dict) -> dict:
    mapping.require(hf, FAMILY, "dense_act_fn", ("relu",), "fmjax's switch experts and MLPs "
                    "are T5 v1.0's ReLU MLPs", default="relu")
    mapping.require(hf, FAMILY, "router_bias", (False,), "fmjax's router has no bias",
                    default=False)
    mapping.require(hf, FAMILY, "router_dtype", ("float32",), "fmjax routes in float32",
                    default="float32")
    t5.require_encoder_decoder(hf, FAMILY)
    fields = t5.model_fields(hf)
    steps = {side: sparse_step(hf, side) for side in ("encoder", "decoder")}
    for side, step in steps.items():
        if step not in STEPS:
            mapping.refuse(FAMILY, f"{side}_sparse_step", step, "fmjax makes the last block of "
                           "each group of moe.interval sparse, HF block i % step == 1: the same "
                           f"blocks only for a step of {' or '.join(map(str, STEPS))}")
    if steps["encoder"] != steps["decoder"]:
        mapping.refuse(FAMILY, "decoder_sparse_step", steps["decoder"], "fmjax has one "
                       f"moe.interval for both stacks, the encoder's step is {steps['encoder']}")
    interval = steps["encoder"]
    for field, n in (("num_layers", fields["n_layers"]),
                     ("num_decoder_layers", fields["n_decoder_layers"])):
        if n % interval:
            mapping.refuse(FAMILY, field, n, f"not a multiple of the sparse step {interval}: "
                           "fmjax stacks the blocks in groups of moe.interval")
    fields.update({
        "model.moe.num_experts": hf["num_experts"], "model.moe.top_k": 1,
        "model.moe.interval": interval, "model.moe.num_shared_experts": 0, "model.moe.d_ff": 0,
        "model.moe.renormalize": False, "model.moe.capacity_factor": 0.0,
        "model.moe.row_capacity": hf.get("expert_capacity", 64),
        "model.moe.load_balance_loss": float(hf.get("router_aux_loss_coef", 0.001)),
        "model.moe.router_z_loss": float(hf.get("router_z_loss_coef", 0.001))})
    return fields


def config_to_hf(cfg) -> dict:
    moe = cfg.moe
    if (not moe.enabled or moe.top_k != 1 or moe.renormalize or moe.num_shared_experts
            or moe.d_ff != cfg.d_ff or moe.interval not in STEPS):
        raise mapping.UnsupportedHFConfig(
            f"config.model.moe = {moe}: HF SwitchTransformers has top-1 experts of width d_ff "
            "scaled by their router probability in every MLP or every other one (num_experts "
            "> 0, top_k 1, renormalize False, no shared experts, d_ff 0 or model.d_ff, "
            f"interval {' or '.join(map(str, STEPS))})")
    return {"architectures": ["SwitchTransformersForConditionalGeneration"],
            "model_type": "switch_transformers", **t5.hf_fields(cfg, "SwitchTransformers"),
            "dense_act_fn": "relu", "num_experts": moe.num_experts,
            "expert_capacity": moe.row_capacity or cfg.seq_len,
            "num_sparse_encoder_layers": cfg.n_layers // moe.interval,
            "num_sparse_decoder_layers": cfg.n_decoder_layers // moe.interval,
            "encoder_sparse_step": moe.interval, "decoder_sparse_step": moe.interval,
            "router_bias": False, "router_dtype": "float32", "router_jitter_noise": 0.0,
            "router_z_loss_coef": moe.router_z_loss,
            "router_aux_loss_coef": moe.load_balance_loss,
            "tie_word_embeddings": cfg.tie_embeddings}  # HF Switch: tied iff scaled, as fmjax


def mlp_links(cfg) -> t5.MlpLinks:
    def links(prefix: str, stack: Stack, sparse: bool) -> list:
        if not sparse:
            return [linear(f"mlp/{fm}/kernel", prefix + f"mlp.{hf}.weight", stack=stack)
                    for fm, hf in t5.MLPS["relu"]]
        experts = prefix + "mlp.experts.expert_{j}."
        return [linear("mlp/router/kernel", prefix + "mlp.router.classifier.weight",
                       stack=stack),
                *(linear(f"mlp/experts/{fm}", experts + f"{hf}.weight", stack=stack,
                         experts=cfg.moe.num_experts) for fm, hf in t5.MLPS["relu"])]
    return links


mapping.register(t5.converter(FAMILY, ("switch_transformers",), config_from_hf, config_to_hf,
                              mlp_links))
