"""Llama <-> transformers' LlamaForCausalLM (config.json model_type "llama").

Projections are torch.nn.Linear weights [out, in]: q_proj [H*K, D], k/v_proj [G*K, D], o_proj
[D, H*K], gate/up_proj [F, D], down_proj [D, F]. HF keeps q/k in the rotate-half RoPE layout
that fmjax's `layers.rope` uses, so no permutation is needed."""
from fmjax.hf import mapping
from fmjax.hf.mapping import Stack, linear, matrix, vector

FAMILY = "llama"


def _rope_theta(hf: dict) -> float:
    """RoPE base from config.json, refusing any scaling (transformers 5 writes
    rope_parameters = {rope_type, rope_theta, ...}; 4.x wrote rope_theta and rope_scaling)."""
    scaling = hf.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) != "default":
        mapping.refuse(FAMILY, "rope_scaling", scaling, "fmjax's RoPE has no frequency scaling")
    params = hf.get("rope_parameters") or {}
    if params.get("rope_type", "default") != "default":
        mapping.refuse(FAMILY, "rope_parameters.rope_type", params["rope_type"],
                       "fmjax's RoPE has no frequency scaling")
    extra = sorted(set(params) - {"rope_type", "rope_theta"})
    if extra:
        mapping.refuse(FAMILY, f"rope_parameters.{extra[0]}", params[extra[0]],
                       "fmjax's RoPE is the default rotary embedding over the whole head")
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        mapping.refuse(FAMILY, "partial_rotary_factor", hf["partial_rotary_factor"],
                       "fmjax rotates the whole head")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict) -> dict:
    mapping.require(hf, FAMILY, "hidden_act", ("silu",), "fmjax's Llama MLP is SwiGLU (SiLU gate)",
                    default="silu")
    mapping.require(hf, FAMILY, "attention_bias", (False,), "fmjax's Llama has no biases",
                    default=False)
    mapping.require(hf, FAMILY, "mlp_bias", (False,), "fmjax's Llama has no biases",
                    default=False)
    heads = hf["num_attention_heads"]
    return {"vocab_size": hf["vocab_size"], "d_model": hf["hidden_size"],
            "n_layers": hf["num_hidden_layers"], "n_heads": heads,
            "n_kv_heads": hf.get("num_key_value_heads") or heads,
            "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads,
            "d_ff": hf["intermediate_size"],
            "max_positions": hf["max_position_embeddings"],
            "seq_len": hf["max_position_embeddings"], "norm_eps": hf.get("rms_norm_eps", 1e-6),
            "rope_theta": _rope_theta(hf),
            "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
            "init_std": hf.get("initializer_range", 0.02)}


def config_to_hf(cfg) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
            "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
            "head_dim": cfg.head_dim, "max_position_embeddings": cfg.max_positions,
            "rms_norm_eps": cfg.norm_eps, "hidden_act": "silu",
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "rope_theta": cfg.rope_theta,  # transformers 4.x reads this one
            "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": False,
            "mlp_bias": False, "attention_dropout": cfg.dropout,
            "initializer_range": cfg.init_std, "pretraining_tp": 1}


def links(cfg) -> list:
    block = Stack(cfg.n_layers)
    layer = "model.layers.{i}."
    out = [matrix("embed/embedding", "model.embed_tokens.weight", vocab_axis=0),
           vector("final_norm/scale", "model.norm.weight")]
    if not cfg.tie_embeddings:
        out.append(linear("lm_head/kernel", "lm_head.weight", vocab_axis=1))
    out += [vector("attn_norm/scale", layer + "input_layernorm.weight", stack=block),
            vector("mlp_norm/scale", layer + "post_attention_layernorm.weight", stack=block)]
    for fm, hf in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        out.append(linear(f"attn/{fm}/kernel", layer + f"self_attn.{hf}.weight", stack=block))
    out.append(linear("attn/out/kernel", layer + "self_attn.o_proj.weight", n_in=2, stack=block))
    for fm in ("gate", "up", "down"):
        out.append(linear(f"mlp/{fm}/kernel", layer + f"mlp.{fm}_proj.weight", stack=block))
    return out


def ignored(cfg) -> tuple:
    # rotary frequency buffers of older checkpoints; a tied head's copy of the embedding
    return (r"rotary_emb\.inv_freq$",) + ((r"^lm_head\.weight$",) if cfg.tie_embeddings else ())


mapping.register(mapping.Converter(
    family=FAMILY, model_types=("llama",), config_from_hf=config_from_hf,
    config_to_hf=config_to_hf, links=links, ignored=ignored, base_prefix="model."))
