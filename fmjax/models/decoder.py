"""Decoder-only Transformer assembled from fmjax.layers; families (gpt2.py, llama.py) choose
the pieces through a `DecoderSpec` instead of branching here on a family name."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from fmjax import layers


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    """What distinguishes one decoder family from another; all sizes come from config.model."""
    norm: str  # layernorm | rmsnorm
    mlp_activation: str  # gelu | swiglu
    use_bias: bool  # biases in dense layers and norms
    learned_positions: bool  # absolute position table (GPT-2) instead of RoPE (Llama)
    scaled_out_init: bool  # GPT-2: output projections init with std / sqrt(2 L)


def _dtype(name: str):
    return jnp.dtype(name)


class Block(nn.Module):
    """Pre-norm block: x + attn(norm(x)); x + mlp(norm(x))."""
    cfg: object  # resolved config.model
    spec: DecoderSpec
    decode: bool = False
    deterministic: bool = True

    def _norm(self, name):
        cfg = self.cfg
        kw = dict(eps=cfg.norm_eps, dtype=_dtype(cfg.dtype), param_dtype=_dtype(cfg.param_dtype),
                  name=name)
        if self.spec.norm == "layernorm":
            return layers.LayerNorm(use_bias=self.spec.use_bias, **kw)
        return layers.RMSNorm(**kw)

    @nn.compact
    def __call__(self, x_BTD, segment_ids_BT, positions_BT):
        cfg, spec = self.cfg, self.spec
        dtype, param_dtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        out_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5 if spec.scaled_out_init else cfg.init_std
        drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic)

        h_BTD = layers.Attention(
            n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
            use_bias=spec.use_bias, use_rope=not spec.learned_positions,
            rope_theta=cfg.rope_theta, dropout=cfg.dropout, init_std=cfg.init_std,
            out_init_std=out_std, implementation=cfg.attention_impl, dtype=dtype,
            param_dtype=param_dtype, name="attn",
        )(self._norm("attn_norm")(x_BTD), segment_ids_BT, positions_BT, decode=self.decode,
          deterministic=self.deterministic)
        x_BTD = layers.constrain(x_BTD + drop(h_BTD), "batch", "length", "embed")

        h_BTD = layers.MLP(d_ff=cfg.d_ff, activation=spec.mlp_activation, use_bias=spec.use_bias,
                           init_std=cfg.init_std, out_init_std=out_std, dtype=dtype,
                           param_dtype=param_dtype, name="mlp")(self._norm("mlp_norm")(x_BTD))
        x_BTD = layers.constrain(x_BTD + drop(h_BTD), "batch", "length", "embed")
        return x_BTD


class ScannedBlock(Block):
    """Block with the (carry, _) -> (carry, _) signature nn.scan needs."""

    def __call__(self, x_BTD, segment_ids_BT, positions_BT):
        return super().__call__(x_BTD, segment_ids_BT, positions_BT), None


class Decoder(nn.Module):
    """tokens [B, T] -> logits [B, T, V] (float32).

    With `return_hidden=True` (tied embeddings only) it returns (final hidden [B, T, D], the
    embedding table [V_padded, D]) instead, so the loss can fuse the output layer
    (`objectives.output_cross_entropy`) without materialising the logits.

    With `return_features=True` it returns the final normalised hidden states [B, T, D] (tied
    or not), for heads other than the LM head (models/classifier.py); an untied `lm_head` is
    still declared, so the param tree is the same as with logits."""
    cfg: object
    spec: DecoderSpec

    @property
    def supports_hidden_output(self) -> bool:
        return bool(self.cfg.tie_embeddings)

    @nn.compact
    def __call__(self, tokens_BT, segment_ids_BT=None, positions_BT=None, *, decode=False,
                 deterministic=True, return_hidden=False, return_features=False):
        cfg, spec = self.cfg, self.spec
        dtype, param_dtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        if segment_ids_BT is None:
            segment_ids_BT = jnp.ones_like(tokens_BT)
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)

        embed = layers.Embed(cfg.padded_vocab_size, cfg.d_model, init_std=cfg.init_std,
                             dtype=dtype, param_dtype=param_dtype, name="embed")
        x_BTD = embed(tokens_BT)
        if spec.learned_positions:
            x_BTD = x_BTD + layers.Embed(cfg.max_positions, cfg.d_model, axes=("positions", "embed"),
                                         init_std=cfg.init_std, dtype=dtype,
                                         param_dtype=param_dtype, name="pos_embed")(positions_BT)
        x_BTD = nn.Dropout(cfg.dropout, deterministic=deterministic)(x_BTD)
        x_BTD = layers.constrain(x_BTD, "batch", "length", "embed")

        x_BTD = self._blocks(x_BTD, segment_ids_BT, positions_BT, decode, deterministic)

        norm_kw = dict(eps=cfg.norm_eps, dtype=dtype, param_dtype=param_dtype, name="final_norm")
        x_BTD = (layers.LayerNorm(use_bias=spec.use_bias, **norm_kw) if spec.norm == "layernorm"
                 else layers.RMSNorm(**norm_kw))(x_BTD)
        lm_head = None if cfg.tie_embeddings else layers.Dense(
            (cfg.padded_vocab_size,), ("embed",), ("vocab",), init_std=cfg.init_std, dtype=dtype,
            param_dtype=param_dtype, name="lm_head")
        if return_features:
            if lm_head is not None:
                lm_head(x_BTD, weights_only=True)  # declares its kernel; no matmul
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

    def _blocks(self, x_BTD, segment_ids_BT, positions_BT, decode, deterministic):
        cfg = self.cfg
        policy = layers.REMAT_POLICIES[cfg.remat_policy]
        if cfg.scan_layers:
            block_cls = ScannedBlock
            if cfg.remat_policy != "none":
                block_cls = nn.remat(block_cls, policy=policy, prevent_cse=False)
            stack = nn.scan(block_cls, variable_axes={"params": 0, "cache": 0},
                            split_rngs={"params": True, "dropout": True},
                            in_axes=(nn.broadcast, nn.broadcast), length=cfg.n_layers,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            x_BTD, _ = stack(cfg, self.spec, decode, deterministic, name="layers")(
                x_BTD, segment_ids_BT, positions_BT)
            return x_BTD
        block_cls = Block
        if cfg.remat_policy != "none":
            block_cls = nn.remat(Block, policy=policy)
        for i in range(cfg.n_layers):
            x_BTD = block_cls(cfg, self.spec, decode, deterministic, name=f"layer_{i}")(
                x_BTD, segment_ids_BT, positions_BT)
        return x_BTD
