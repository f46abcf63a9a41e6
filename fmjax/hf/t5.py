"""T5 v1.0 <-> transformers' T5ForConditionalGeneration (config.json model_type "t5",
feed_forward_proj "relu"); v1.1 (fmjax/hf/t5_1_1.py) is `t5_converter()` with another MLP,
Switch (fmjax/hf/switch.py) `converter()` with its sparse MLPs.

Names: shared.weight (the embedding), {encoder,decoder}.block.{i}.layer.{j}: j = 0
SelfAttention.{q,k,v,o} + layer_norm, decoder j = 1 EncDecAttention + layer_norm, last j
DenseReluDense.{wi,wo} (v1.1: wi_0 = gate, wi_1 = up) + layer_norm (torch.nn.Linear
[out, in]); the relative attention bias [buckets, heads] lives in block 0's SelfAttention only
(one table per stack); {encoder,decoder}.final_layer_norm; lm_head.weight when untied.

Output scaling and tying: fmjax's T5 scales the decoder output by d_model**-0.5 iff its lm_head
is the embedding (v1.0), as transformers 4 did from tie_word_embeddings. transformers 5 always
writes tie_word_embeddings = true, says scaled or not in scale_decoder_outputs, and unties
lm_head exactly when the checkpoint holds an lm_head.weight that differs from shared.weight.
So: scaled -> tied (a stored lm_head.weight must equal shared.weight); not scaled -> untied,
lm_head from lm_head.weight, or a copy of shared.weight when the checkpoint has none (the same
function). Export writes both fields, which transformers 4 and 5 read alike.

encoder/decoder.embed_tokens.weight, when stored, must equal shared.weight; the unused
EncDecAttention.relative_attention_bias of older checkpoints is dropped. A spiece.model in the
directory becomes the checkpoint's tokenizer, its extra rows (32,128 - 32,000)
config.tokenizer.extra_ids. HF's T5 tokenizer makes the first 100 of them (its extra_ids) the
sentinels, <extra_id_k> = pieces + 99 - k (32,099 - k), which is fmjax's layout with
config.span_corruption.num_sentinels = 100 (configs/t5_small.py). config_from_hf sees only
config.json, which does not say how many sentinels the tokenizer has, so an import keeps
num_sentinels = 0 (sentinel k = vocab_size - 1 - k); span-corruption training or sentinel-aware
decoding of an imported released T5 wants --config.span_corruption.num_sentinels=100.
fmjax's decoder starts from id 0 (objectives/span_corruption.py shift_right_in_segments), as
HF's decoder_start_token_id = pad = 0 does; another start id is refused.
"""
from __future__ import annotations

from typing import Any, Callable

from fmjax.hf import mapping
from fmjax.hf.mapping import Stack, linear, matrix, vector

# (fmjax MLP param, HF DenseReluDense name) by HF feed_forward_proj
MLPS = {"relu": (("up", "wi"), ("down", "wo")),
        "gated-gelu": (("gate", "wi_0"), ("up", "wi_1"), ("down", "wo"))}
SEQ_LEN = 512  # no position table; fmjax's seq_len default: T5's pretraining input length


def _scaled(hf: dict) -> bool:
    """Whether HF scales the decoder output by d_model**-0.5 (v1.0: yes)."""
    if "scale_decoder_outputs" in hf:  # transformers >= 5
        return bool(hf["scale_decoder_outputs"])
    return hf.get("tie_word_embeddings", True) is not False


def model_fields(hf: dict) -> dict:
    """config.model fields of a T5-layout config.json (T5, Switch)."""
    return {"vocab_size": hf["vocab_size"], "d_model": hf["d_model"],
            "n_layers": hf["num_layers"],
            "n_decoder_layers": hf.get("num_decoder_layers") or hf["num_layers"],
            "n_heads": hf["num_heads"], "n_kv_heads": 0, "head_dim": hf["d_kv"],
            "d_ff": hf["d_ff"], "max_positions": 0, "seq_len": SEQ_LEN,
            "relative_buckets": hf.get("relative_attention_num_buckets", 32),
            "relative_max_distance": hf.get("relative_attention_max_distance", 128),
            "norm_eps": hf.get("layer_norm_epsilon", 1e-6), "tie_embeddings": _scaled(hf),
            "init_std": hf.get("initializer_factor", 1.0)}


def require_encoder_decoder(hf: dict, family: str) -> None:
    mapping.require(hf, family, "is_encoder_decoder", (True,),
                    "fmjax's T5 is the encoder-decoder", default=True)
    mapping.require(hf, family, "decoder_start_token_id", (0, None),
                    "fmjax's T5 decoder inputs start with id 0")


def hf_fields(cfg, name: str) -> dict:
    """The config.json fields a T5-layout HF model (`name`, for errors) shares with T5."""
    mapping.require_plain_heads(cfg, name, head_dim_free=True)  # d_kv is its own field
    return {"vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "d_kv": cfg.head_dim,
            "d_ff": cfg.d_ff, "num_layers": cfg.n_layers,
            "num_decoder_layers": cfg.n_decoder_layers, "num_heads": cfg.n_heads,
            "relative_attention_num_buckets": cfg.relative_buckets,
            "relative_attention_max_distance": cfg.relative_max_distance,
            "dropout_rate": cfg.dropout, "layer_norm_epsilon": cfg.norm_eps,
            "initializer_factor": cfg.init_std, "is_encoder_decoder": True,
            "decoder_start_token_id": 0}


# (MLP link prefix "{side}.block.{i}.layer.{k}.", its Stack, whether its blocks are sparse)
# -> the MLP's links
MlpLinks = Callable[[str, Stack, bool], list]


def dense_mlp(feed_forward_proj: str) -> MlpLinks:
    """T5's DenseReluDense MLP (never sparse: HF T5 has no mixture of experts)."""
    def links(prefix: str, stack: Stack, sparse: bool) -> list:
        return [linear(f"mlp/{fm}/kernel", prefix + f"DenseReluDense.{hf}.weight", stack=stack)
                for fm, hf in MLPS[feed_forward_proj]]
    return links


def links(cfg, mlp: MlpLinks) -> list:
    """Every param's link of a T5-layout model whose MLP links `mlp` gives."""
    out = [matrix("embed/embedding", "shared.weight", vocab_axis=0)]
    if not cfg.tie_embeddings:
        out.append(linear("lm_head/kernel", "lm_head.weight", vocab_axis=1))
    group = cfg.moe.interval if cfg.moe.enabled else 1
    for side, n_layers in (("encoder", cfg.n_layers), ("decoder", cfg.n_decoder_layers)):
        block = f"{side}.block.{{i}}.layer."
        out += [matrix(f"{side}/rel_bias/embedding",
                       f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
                vector(f"{side}/final_norm/scale", f"{side}.final_layer_norm.weight")]
        sublayers = [("attn", "0.SelfAttention")]
        if side == "decoder":
            sublayers.append(("cross_attn", "1.EncDecAttention"))
        stacks = mapping.grouped_stacks(n_layers, group, prefix=f"{side}/")
        for stack in stacks:
            for fm, hf in sublayers:
                out.append(vector(f"{fm}_norm/scale", block + f"{hf[0]}.layer_norm.weight",
                                  stack=stack))
                for proj, name in (("query", "q"), ("key", "k"), ("value", "v")):
                    out.append(linear(f"{fm}/{proj}/kernel", block + f"{hf}.{name}.weight",
                                      stack=stack))
                out.append(linear(f"{fm}/out/kernel", block + f"{hf}.o.weight", n_in=2,
                                  stack=stack))
            mlp_prefix = block + f"{len(sublayers)}."
            out.append(vector("mlp_norm/scale", mlp_prefix + "layer_norm.weight", stack=stack))
            out += mlp(mlp_prefix, stack, cfg.moe.enabled and stack is stacks[-1])
    return out


def converter(family: str, model_types: tuple[str, ...], config_from_hf, config_to_hf,
              mlp: Callable[[Any], MlpLinks]) -> mapping.Converter:
    """The Converter of a T5-layout fmjax `family`; `mlp(cfg)` links its MLPs."""

    def copies(cfg) -> dict:
        out = {f"{side}.embed_tokens.weight": "shared.weight" for side in ("encoder", "decoder")}
        if cfg.tie_embeddings:
            out["lm_head.weight"] = "shared.weight"
        return out

    return mapping.Converter(
        family=family, model_types=model_types, config_from_hf=config_from_hf,
        config_to_hf=config_to_hf, links=lambda cfg: links(cfg, mlp(cfg)),
        ignored=lambda cfg: (r"EncDecAttention\.relative_attention_bias\.weight$",),
        aliases=lambda cfg: {} if cfg.tie_embeddings else {"lm_head.weight": ("shared.weight",)},
        copies=copies, tokenizer_files=("spiece.model",), default_sentinels=100,
        sentencepiece_class=None)


def t5_converter(family: str, feed_forward_proj: str, sibling: str) -> mapping.Converter:
    """The Converter of the fmjax T5 `family` whose MLP is HF's `feed_forward_proj`; `sibling`
    is the family to suggest for the other MLP."""

    def config_from_hf(hf: dict) -> dict:
        mapping.require(hf, family, "feed_forward_proj", (feed_forward_proj,),
                        f"fmjax's {family} MLP is {feed_forward_proj}; "
                        f"{'/'.join(k for k in MLPS if k != feed_forward_proj)} is "
                        f"--family={sibling}", default="relu")
        require_encoder_decoder(hf, family)
        return model_fields(hf)

    def config_to_hf(cfg) -> dict:
        if cfg.moe.enabled:
            raise mapping.UnsupportedHFConfig(
                f"config.model.moe.num_experts = {cfg.moe.num_experts}: HF T5 has no mixture "
                "of experts; HF SwitchTransformers does: train with config.model.family = "
                "switch (configs/switch_base_8.py) and export with --family=switch")
        return {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
                **hf_fields(cfg, "T5"), "feed_forward_proj": feed_forward_proj,
                "tie_word_embeddings": cfg.tie_embeddings,  # transformers 4: tied and scaled
                "scale_decoder_outputs": cfg.tie_embeddings}  # transformers 5: scaled

    return converter(family, ("t5",), config_from_hf, config_to_hf,
                     lambda cfg: dense_mlp(feed_forward_proj))


mapping.register(t5_converter("t5", "relu", sibling="t5_1_1"))
