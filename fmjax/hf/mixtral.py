"""Mixtral <-> transformers' MixtralForCausalLM (config.json model_type "mixtral").

Llama's tensors (fmjax/hf/llama.py) with each MLP replaced by block_sparse_moe: the router
gate.weight [E, D] (fmjax mlp/router/kernel [D, E]) and per expert j the torch.nn.Linear
weights experts.{j}.w1 (gate) and w3 (up) [F, D], w2 (down) [D, F], which are slices of fmjax's
stacked mlp/experts/{gate,up,down} [E, D, F] / [E, F, D] (the checkpoint layout on the Hub,
which transformers 5 fuses into experts.gate_up_proj only in memory). Routing as transformers:
softmax over the E router logits, the top num_experts_per_tok renormalised to sum to 1,
dropless (fmjax's moe.capacity_factor 0)."""
from fmjax.hf import llama, mapping
from fmjax.hf.mapping import Stack, linear

FAMILY = "mixtral"


def config_from_hf(hf: dict) -> dict:
    if hf.get("sliding_window") is not None:
        mapping.refuse(FAMILY, "sliding_window", hf["sliding_window"],
                       "fmjax's attention is not windowed")
    fields = llama.config_from_hf(hf)
    fields.update({
        "model.moe.num_experts": hf["num_local_experts"],
        "model.moe.top_k": hf["num_experts_per_tok"],
        "model.moe.interval": 1, "model.moe.num_shared_experts": 0, "model.moe.d_ff": 0,
        "model.moe.renormalize": True, "model.moe.capacity_factor": 0.0,
        "model.moe.load_balance_loss": float(hf.get("router_aux_loss_coef", 0.02)),
        "model.moe.router_z_loss": 0.0})
    return fields


def config_to_hf(cfg) -> dict:
    moe = cfg.moe
    if not moe.enabled or moe.interval != 1 or moe.num_shared_experts or not moe.renormalize \
            or moe.d_ff != cfg.d_ff:
        raise mapping.UnsupportedHFConfig(
            f"config.model.moe = {moe}: HF Mixtral has a mixture of experts of width d_ff in "
            "every layer (num_experts > 0, interval 1, no shared experts, d_ff 0 or "
            "model.d_ff, renormalize True)")
    hf = llama.config_to_hf(cfg)
    hf.update({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
               "num_local_experts": moe.num_experts, "num_experts_per_tok": moe.top_k,
               "router_aux_loss_coef": moe.load_balance_loss, "router_jitter_noise": 0.0,
               "output_router_logits": False, "sliding_window": None})
    for key in ("mlp_bias", "pretraining_tp"):
        hf.pop(key, None)
    return hf


def links(cfg) -> list:
    block, e = Stack(cfg.n_layers), cfg.moe.num_experts
    moe = "model.layers.{i}.block_sparse_moe."
    out = [link for link in llama.links(cfg) if not link.fm.startswith("mlp/")]
    out.append(linear("mlp/router/kernel", moe + "gate.weight", stack=block))
    for fm, hf in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
        out.append(linear(f"mlp/experts/{fm}", moe + "experts.{j}." + hf + ".weight",
                          stack=block, experts=e))
    return out


mapping.register(mapping.Converter(
    family=FAMILY, model_types=("mixtral",), config_from_hf=config_from_hf,
    config_to_hf=config_to_hf, links=links, ignored=llama.ignored, base_prefix="model."))
