"""Decoder-only Transformer assembled from fmjax.nn.layers (blocks: models/transformer.py);
families (gpt2.py, llama.py) choose the pieces through a `DecoderSpec` instead of branching
here on a family name.

Params: embed/embedding [V, D], pos_embed/embedding [P, D] (learned positions only), layers/...
(or layer_i/...: attn_norm, attn/{query,key,value,out}, mlp_norm, mlp/{up,[gate,]down}),
final_norm, lm_head/kernel [D, V] (untied only).

Context parallelism (mesh.context > 1, fmjax/nn/context_parallel.py): the blocks run on rows
in zigzag order (inputs permuted on entry, the hidden states restored to token order before
the final norm), so every shard does the same causal attention work; callers see token order."""
from __future__ import annotations

import contextlib
import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from fmjax.nn import context_parallel, layers
from fmjax.models.transformer import BlockSpec, make_norm, stack


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    """What distinguishes one decoder family from another; all sizes come from config.model."""
    norm: str  # layernorm | rmsnorm
    mlp_activation: str  # gelu | swiglu
    use_bias: bool  # biases in dense layers and norms
    learned_positions: bool  # absolute position table (GPT-2) instead of RoPE (Llama)
    scaled_out_init: bool  # GPT-2: output projections init with std / sqrt(2 L)

    def block_spec(self) -> BlockSpec:
        return BlockSpec(norm=self.norm, mlp_activation=self.mlp_activation,
                         use_bias=self.use_bias, use_rope=not self.learned_positions,
                         init="gpt2" if self.scaled_out_init else "normal")


def _dtype(name: str):
    return jnp.dtype(name)


def last_token_index(segment_ids_BT):
    """[B] index of the last position with segment_ids > 0 (rows are left-aligned, padding 0
    at the end; a packed row gives its last document's last token); 0 for an all-padding row."""
    positions_BT = jnp.broadcast_to(jnp.arange(segment_ids_BT.shape[1]), segment_ids_BT.shape)
    return jnp.max(jnp.where(segment_ids_BT > 0, positions_BT, 0), axis=1)


class Decoder(nn.Module):
    """tokens [B, T] -> logits [B, T, V] (float32).

    prefix_mask_BT (prefix LM): nonzero on each segment's bidirectional prefix; a token sees
    the real tokens of its segment at earlier positions or inside the prefix. None = causal.

    With `return_hidden=True` (tied embeddings only) it returns (final hidden [B, T, D], the
    embedding table [V_padded, D]) instead, so the loss can fuse the output layer
    (`objectives.output_cross_entropy`) without materialising the logits.

    With `return_features=True` it returns the final normalised hidden states [B, T, D] (tied
    or not), and with `return_pooled=True` the one of each row's last real token [B, D] (the
    only position that has attended to the whole text), for heads other than the LM head
    (models/classifier.py); an untied `lm_head` is still declared, so the param tree is the
    same as with logits."""
    cfg: object
    spec: DecoderSpec

    @property
    def supports_hidden_output(self) -> bool:
        return bool(self.cfg.tie_embeddings)

    @nn.compact
    def __call__(self, tokens_BT, segment_ids_BT=None, positions_BT=None, prefix_mask_BT=None, *,
                 decode=False, deterministic=True, return_hidden=False, return_features=False,
                 return_pooled=False):
        cfg, spec = self.cfg, self.spec
        dtype, param_dtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        last_B = None
        if return_pooled:
            last_B = (jnp.full((tokens_BT.shape[0],), tokens_BT.shape[1] - 1)
                      if segment_ids_BT is None else last_token_index(segment_ids_BT))
        if segment_ids_BT is None:
            segment_ids_BT = jnp.ones_like(tokens_BT)
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)

        shards = 0 if decode else context_parallel.zigzag_shards(tokens_BT.shape[1])
        if shards > 1:  # causal load balancing: rows in zigzag order until the output layer
            tokens_BT, segment_ids_BT, positions_BT, prefix_mask_BT = (
                None if a is None else context_parallel.to_zigzag(a, shards)
                for a in (tokens_BT, segment_ids_BT, positions_BT, prefix_mask_BT))

        embed = layers.Embed(cfg.padded_vocab_size, cfg.d_model, init_std=cfg.init_std,
                             dtype=dtype, param_dtype=param_dtype, name="embed")
        x_BTD = embed(tokens_BT)
        if spec.learned_positions:
            x_BTD = x_BTD + layers.Embed(cfg.max_positions, cfg.d_model, axes=("positions", "embed"),
                                         init_std=cfg.init_std, dtype=dtype,
                                         param_dtype=param_dtype, name="pos_embed")(positions_BT)
        x_BTD = nn.Dropout(cfg.dropout, deterministic=deterministic)(x_BTD)
        x_BTD = layers.constrain(x_BTD, "batch", "length", "embed")

        inputs = (segment_ids_BT, positions_BT)
        if prefix_mask_BT is not None:
            inputs += (prefix_mask_BT,)
        with context_parallel.zigzag_rows() if shards > 1 else contextlib.nullcontext():
            x_BTD = stack(cfg, spec.block_spec(), cfg.n_layers, x_BTD, *inputs, decode=decode,
                          deterministic=deterministic)
        if shards > 1:
            x_BTD = layers.constrain(context_parallel.from_zigzag(x_BTD, shards),
                                     "batch", "length", "embed")

        x_BTD = make_norm(cfg, spec.block_spec(), "final_norm")(x_BTD)
        lm_head = None if cfg.tie_embeddings else layers.Dense(
            (cfg.padded_vocab_size,), ("embed",), ("vocab",), init_std=cfg.init_std, dtype=dtype,
            param_dtype=param_dtype, name="lm_head")
        if return_features or return_pooled:
            if lm_head is not None:
                lm_head(x_BTD, weights_only=True)  # declares its kernel; no matmul
            if return_pooled:
                x_BD = jnp.take_along_axis(x_BTD, last_B[:, None, None], axis=1)[:, 0]
                return layers.constrain(x_BD, "batch", "embed")
            return x_BTD
        if return_hidden:
            if not cfg.tie_embeddings:
                raise ValueError("return_hidden=True needs tied embeddings (the output table "
                                 "is the embedding); compute logits instead")
            return x_BTD, embed.embedding.astype(dtype)
        if cfg.tie_embeddings:
            logits_BTV = embed.attend(x_BTD)
        else:
            logits_BTV = lm_head(x_BTD)
        logits_BTV = layers.constrain(logits_BTV, "batch", "length", "vocab")
        if cfg.padded_vocab_size != cfg.vocab_size:  # padded rows never win
            logits_BTV = logits_BTV[..., :cfg.vocab_size]
        return logits_BTV.astype(jnp.float32)
