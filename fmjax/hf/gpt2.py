"""GPT-2 <-> transformers' GPT2LMHeadModel (config.json model_type "gpt2").

HF stores every projection as a Conv1D, weight [in, out] (fmjax's layout, flattened), and
fuses query/key/value into one c_attn [D, 3D] (+ bias [3D]) in that order."""
from fmjax.hf import mapping
from fmjax.hf.mapping import Stack, linear, matrix, vector

FAMILY = "gpt2"
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")  # fmjax's MLP uses the tanh approximation


def config_from_hf(hf: dict) -> dict:
    mapping.require(hf, FAMILY, "activation_function", TANH_GELU,
                    "fmjax's GPT-2 MLP is GELU with the tanh approximation", default="gelu_new")
    mapping.require(hf, FAMILY, "scale_attn_weights", (True,),
                    "fmjax always scales attention logits by 1/sqrt(head_dim)", default=True)
    mapping.require(hf, FAMILY, "scale_attn_by_inverse_layer_idx", (False,),
                    "fmjax does not scale attention by 1/(layer + 1)", default=False)
    mapping.require(hf, FAMILY, "add_cross_attention", (False,),
                    "fmjax's GPT-2 is decoder-only, without cross-attention", default=False)
    d_model = hf["n_embd"]
    return {"vocab_size": hf["vocab_size"], "d_model": d_model, "n_layers": hf["n_layer"],
            "n_heads": hf["n_head"], "n_kv_heads": 0, "head_dim": 0,
            "d_ff": hf.get("n_inner") or 4 * d_model, "max_positions": hf["n_positions"],
            "seq_len": hf["n_positions"], "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
            "tie_embeddings": bool(hf.get("tie_word_embeddings", True)),
            "init_std": hf.get("initializer_range", 0.02)}


def config_to_hf(cfg) -> dict:
    mapping.require_plain_heads(cfg, "GPT-2")
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": cfg.vocab_size, "n_positions": cfg.max_positions,
            "n_embd": cfg.d_model, "n_layer": cfg.n_layers, "n_head": cfg.n_heads,
            "n_inner": cfg.d_ff, "activation_function": "gelu_new",
            "layer_norm_epsilon": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
            "initializer_range": cfg.init_std, "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout, "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False}


def links(cfg) -> list:
    block = Stack(cfg.n_layers)
    h = "transformer.h.{i}."
    out = [matrix("embed/embedding", "transformer.wte.weight", vocab_axis=0),
           matrix("pos_embed/embedding", "transformer.wpe.weight"),
           vector("final_norm/scale", "transformer.ln_f.weight"),
           vector("final_norm/bias", "transformer.ln_f.bias")]
    if not cfg.tie_embeddings:
        out.append(linear("lm_head/kernel", "lm_head.weight", vocab_axis=1))
    for norm, hf_norm in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
        out += [vector(f"{norm}/scale", h + f"{hf_norm}.weight", stack=block),
                vector(f"{norm}/bias", h + f"{hf_norm}.bias", stack=block)]
    for proj in ("query", "key", "value"):  # c_attn = [q | k | v] along its output axis
        out.append(matrix(f"attn/{proj}/kernel", h + "attn.c_attn.weight", stack=block))
    for proj in ("query", "key", "value"):
        out.append(vector(f"attn/{proj}/bias", h + "attn.c_attn.bias", stack=block))
    out += [matrix("attn/out/kernel", h + "attn.c_proj.weight", n_in=2, stack=block),
            vector("attn/out/bias", h + "attn.c_proj.bias", stack=block),
            matrix("mlp/up/kernel", h + "mlp.c_fc.weight", stack=block),
            vector("mlp/up/bias", h + "mlp.c_fc.bias", stack=block),
            matrix("mlp/down/kernel", h + "mlp.c_proj.weight", stack=block),
            vector("mlp/down/bias", h + "mlp.c_proj.bias", stack=block)]
    return out


def ignored(cfg) -> tuple:
    # causal-mask buffers of older checkpoints; a tied head's copy of the embedding
    return (r"(^|\.)attn\.(masked_)?bias$",) + ((r"^lm_head\.weight$",) if cfg.tie_embeddings
                                                else ())


mapping.register(mapping.Converter(
    family=FAMILY, model_types=("gpt2",), config_from_hf=config_from_hf,
    config_to_hf=config_to_hf, links=links, ignored=ignored, base_prefix="transformer."))
