"""BERT (Devlin et al. 2019), mirroring Hugging Face `BertForMaskedLM` + BERT's pooler.

Word + learned position + token-type embeddings, summed, LayerNorm (with bias), dropout;
post-LayerNorm blocks x = LN(x + attn(x)); x = LN(x + mlp(x)) with exact (erf) GELU, biases
everywhere, bidirectional attention within a packed segment. Pooler: tanh(dense(first token)).
MLM head: dense + GELU + LayerNorm, then logits against the word embeddings (tied) plus an
output bias [V].

Params: embed/embedding [V, D], type_embed/embedding [types, D], pos_embed/embedding [P, D],
embed_norm/{scale, bias}, layers/... (or layer_i/...: attn/{query,key,value,out}/{kernel,bias},
attn_norm, mlp/{up,down}/{kernel,bias}, mlp_norm), pooler/{kernel, bias} [D, D],
mlm_head/{transform/{kernel,bias}, norm/{scale,bias}, bias [V]}. The published parameter
count is everything but `mlm_head` (Family.uncounted_params).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmjax.nn import layers
from fmjax import models
from fmjax.models.transformer import BlockSpec, stack

SPEC = BlockSpec(norm="layernorm", mlp_activation="gelu_exact", use_bias=True, post_norm=True,
                 causal=False)


class MLMHead(nn.Module):
    """x [B, T, D] -> masked-LM logits [B, T, V_padded] with the word embedding table."""
    cfg: object

    @nn.compact
    def __call__(self, x_BTD, table_VD):
        cfg = self.cfg
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        h_BTD = layers.Dense((cfg.d_model,), ("embed",), (None,), use_bias=True,
                             init_std=cfg.init_std, dtype=dtype, param_dtype=param_dtype,
                             name="transform")(x_BTD)
        h_BTD = layers.LayerNorm(eps=cfg.norm_eps, dtype=dtype, param_dtype=param_dtype,
                                 name="norm")(jax.nn.gelu(h_BTD, approximate=False))
        bias_V = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                            (table_VD.shape[0],), param_dtype)
        logits_BTV = jnp.einsum("btd,vd->btv", h_BTD, table_VD.astype(dtype))
        return logits_BTV + bias_V.astype(dtype)


class Bert(nn.Module):
    """tokens [B, T] -> MLM logits [B, T, V] (float32); return_features: the last block's
    output [B, T, D]; return_pooled: the pooler's tanh(dense(first token)) [B, D]."""
    cfg: object

    supports_hidden_output = False  # the MLM head is more than the embedding table
    pooled_input_names = ("tokens_BT", "segment_ids_BT", "positions_BT", "token_types_BT")

    @nn.compact
    def __call__(self, tokens_BT, segment_ids_BT=None, positions_BT=None, token_types_BT=None, *,
                 deterministic=True, return_features=False, return_pooled=False):
        cfg = self.cfg
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        if segment_ids_BT is None:
            segment_ids_BT = jnp.ones_like(tokens_BT)
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
        if token_types_BT is None:
            token_types_BT = jnp.zeros_like(tokens_BT)

        def table(rows, axis, name):
            return layers.Embed(rows, cfg.d_model, axes=(axis, "embed"), init_std=cfg.init_std,
                                dtype=dtype, param_dtype=param_dtype, name=name)

        embed = table(cfg.padded_vocab_size, "vocab", "embed")
        x_BTD = embed(tokens_BT) + table(cfg.type_vocab_size, "token_types",
                                         "type_embed")(token_types_BT)
        x_BTD = x_BTD + table(cfg.max_positions, "positions", "pos_embed")(positions_BT)
        x_BTD = layers.LayerNorm(eps=cfg.norm_eps, dtype=dtype, param_dtype=param_dtype,
                                 name="embed_norm")(x_BTD)
        x_BTD = nn.Dropout(cfg.dropout, deterministic=deterministic)(x_BTD)
        x_BTD = layers.constrain(x_BTD, "batch", "length", "embed")

        x_BTD = stack(cfg, SPEC, cfg.n_layers, x_BTD, segment_ids_BT, positions_BT,
                      deterministic=deterministic)

        pooler = layers.Dense((cfg.d_model,), ("embed",), (None,), use_bias=True,
                              init_std=cfg.init_std, dtype=dtype, param_dtype=param_dtype,
                              name="pooler")
        mlm_head = MLMHead(cfg, name="mlm_head")
        if return_features or return_pooled:
            if self.is_initializing():  # declare the MLM head: the same tree in every mode
                mlm_head(x_BTD, embed.embedding)
            if return_pooled:
                return layers.constrain(jnp.tanh(pooler(x_BTD[:, 0])), "batch", "embed")
            pooler(x_BTD, weights_only=True)
            return x_BTD
        pooler(x_BTD, weights_only=True)  # declared (published count); unused by the MLM loss
        logits_BTV = layers.constrain(mlm_head(x_BTD, embed.embedding), "batch", "length", "vocab")
        if cfg.padded_vocab_size != cfg.vocab_size:  # padded rows never win
            logits_BTV = logits_BTV[..., :cfg.vocab_size]
        return logits_BTV.astype(jnp.float32)


def _position_params(cfg) -> int:
    """Embedding tables that feed no matmul (positions, token types): excluded from 6N."""
    return (cfg.max_positions + cfg.type_vocab_size) * cfg.d_model


models.register(models.Family(
    name="bert",
    make_module=Bert,
    default_d_ff=lambda d: 4 * d,
    default_tie_embeddings=True,
    position_params=_position_params,
    kind="encoder",
    pretrain_objective="mlm",
    uncounted_params=("mlm_head",),
))
