"""T5 v1.0 (Raffel et al. 2020), mirroring Hugging Face `T5ForConditionalGeneration`; v1.1 is
the same network with another `T5Spec` (models/t5_1_1.py).

One token embedding shared by encoder and decoder; no biases; T5 LayerNorm = RMS norm without
mean or bias; pre-norm blocks; attention logits NOT scaled by 1/sqrt(head_dim) (the init is);
a relative-position bias table [buckets, H] per stack (HF keeps it in the stack's first layer),
bidirectional buckets in the encoder and causal ones in the decoder, added in every layer of
its stack's self-attention (never in cross-attention); decoder blocks: self-attention,
cross-attention, MLP; a final RMS norm per stack. Tied output: decoder output * d_model**-0.5
against the embedding; untied (v1.1): a separate lm_head, no scaling (HF: scaling iff tied).

Packed rows: the encoder attends within a segment, the decoder causally within a segment, and
cross-attention from a decoder token to the encoder tokens with the same segment id.

Params: embed/embedding [V, D]; encoder/{rel_bias/embedding [buckets, H], layers/... (or
layer_i/...: attn_norm/scale, attn/{query,key,value,out}/kernel, mlp_norm/scale,
mlp/{up,down}/kernel (v1.1: mlp/{gate,up,down})), final_norm/scale}; decoder/{rel_bias,
layers/... (attn_norm, attn, cross_attn_norm, cross_attn/{query,key,value,out}, mlp_norm, mlp),
final_norm}; lm_head/kernel [D, V] (untied only). HF names: attn = SelfAttention (q,k,v,o),
cross_attn = EncDecAttention, mlp/up = wi (v1.1: gate = wi_0, up = wi_1), mlp/down = wo.
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmjax.nn import attention, layers
from fmjax.models import flops
from fmjax import models
from fmjax.models.transformer import BlockSpec, stack


@dataclasses.dataclass(frozen=True)
class T5Spec:
    """What distinguishes T5 versions (tied/untied output comes from config.model)."""
    mlp_activation: str  # relu (v1.0) | geglu (v1.1: gelu_new gate x linear)

    def block_spec(self, decoder: bool) -> BlockSpec:
        return BlockSpec(norm="rmsnorm", mlp_activation=self.mlp_activation, use_bias=False,
                         causal=decoder, cross_attention=decoder, attention_scale=1.0,
                         mlp_dropout=True, init="t5")


class T5Stack(nn.Module):
    """Embedded tokens [B, T, D] -> the stack's final-normed output [B, T, D]."""
    cfg: object
    spec: T5Spec
    decoder: bool

    @nn.compact
    def __call__(self, x_BTD, segment_ids_BT, positions_BT, encoded_BSD=None,
                 encoder_segment_ids_BS=None, *, deterministic=True, decode=False):
        cfg = self.cfg
        drop = nn.Dropout(cfg.dropout, deterministic=deterministic)
        x_BTD = layers.constrain(drop(x_BTD), "batch", "length", "embed")
        key_positions_BS = self._key_positions(positions_BT) if decode else positions_BT
        bias_BHTS = attention.RelativePositionBias(
            n_heads=cfg.n_heads, bidirectional=not self.decoder, num_buckets=cfg.relative_buckets,
            max_distance=cfg.relative_max_distance, init_std=cfg.init_std * cfg.d_model ** -0.5,
            param_dtype=jnp.dtype(cfg.param_dtype), name="rel_bias")(positions_BT,
                                                                     key_positions_BS)
        inputs = (segment_ids_BT, positions_BT, None, bias_BHTS)
        if self.decoder:
            inputs += (encoded_BSD, encoder_segment_ids_BS)
        n_layers = cfg.n_decoder_layers if self.decoder else cfg.n_layers
        x_BTD = stack(cfg, self.spec.block_spec(self.decoder), n_layers, x_BTD, *inputs,
                      decode=decode, deterministic=deterministic)
        x_BTD = layers.RMSNorm(eps=cfg.norm_eps, dtype=jnp.dtype(cfg.dtype),
                               param_dtype=jnp.dtype(cfg.param_dtype), name="final_norm")(x_BTD)
        return drop(x_BTD)

    def _key_positions(self, positions_BT):
        """Decoding: the positions of every slot of the self-attention KV cache [B, L] (this
        call's written at the cache index, as Attention._update_cache writes its keys), for
        the relative-position bias of this call's queries against the whole cache."""
        is_init = not self.has_variable("cache", "key_positions")
        cached = self.variable("cache", "key_positions", jnp.zeros, positions_BT.shape, jnp.int32)
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        if is_init:
            return positions_BT
        cached.value = jax.lax.dynamic_update_slice(
            cached.value, positions_BT.astype(jnp.int32), (0, index.value))
        index.value = index.value + positions_BT.shape[1]
        return cached.value


def _defaults(tokens_BT, segment_ids_BT, positions_BT):
    if segment_ids_BT is None:
        segment_ids_BT = jnp.ones_like(tokens_BT)
    if positions_BT is None:
        positions_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
    return segment_ids_BT, positions_BT


class T5(nn.Module):
    """(encoder tokens [B, S], decoder input tokens [B, T]) -> logits [B, T, V] (float32).

    decoder_tokens_BT are the decoder INPUTS (targets shifted right, start id 0). None: one
    start token per row (what `model.init(rng, encoder_tokens)` builds the decoder with).
    return_features: the decoder's final-normed output [B, T, D]; return_pooled: the mean of
    the encoder output over real (segment > 0) tokens [B, D] (float32; the decoder is only
    run when initialising, to declare its params); return_hidden (tied only): (decoder output
    scaled by d_model**-0.5, embedding table), for the fused output-layer loss.

    decode (generation with a KV cache, fmjax/generation/decoding.py): the decoder's
    self-attention keys/values go to the "cache" collection (created by an init call with
    decoder tokens [B, max new tokens]); the first decode call runs the encoder and caches
    every layer's cross-attention keys/values, later calls pass encoder_tokens_BS = None (the
    encoder does not run again) and one decoder token per row."""
    cfg: object
    spec: T5Spec

    pooled_input_names = ("encoder_tokens_BS", "encoder_segment_ids_BS", "encoder_positions_BS")

    @property
    def supports_hidden_output(self) -> bool:
        return bool(self.cfg.tie_embeddings)

    @nn.compact
    def __call__(self, encoder_tokens_BS, decoder_tokens_BT=None, encoder_segment_ids_BS=None,
                 decoder_segment_ids_BT=None, encoder_positions_BS=None, decoder_positions_BT=None,
                 *, deterministic=True, return_features=False, return_pooled=False,
                 return_hidden=False, decode=False):
        cfg = self.cfg
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        embed = layers.Embed(cfg.padded_vocab_size, cfg.d_model, init_std=cfg.init_std,
                             dtype=dtype, param_dtype=param_dtype, name="embed")
        if encoder_tokens_BS is None:  # a decode step: cross-attention reads the cache
            if not decode or decoder_tokens_BT is None:
                raise ValueError("encoder_tokens_BS = None needs decode=True and decoder tokens "
                                 "(a decoding step after the first); pass the encoder tokens")
            encoded_BSD = enc_seg_BS = None
        else:
            enc_seg_BS, enc_pos_BS = _defaults(encoder_tokens_BS, encoder_segment_ids_BS,
                                               encoder_positions_BS)
            encoded_BSD = T5Stack(cfg, self.spec, decoder=False, name="encoder")(
                embed(encoder_tokens_BS), enc_seg_BS, enc_pos_BS, deterministic=deterministic)
        decoder = T5Stack(cfg, self.spec, decoder=True, name="decoder")
        lm_head = None if cfg.tie_embeddings else layers.Dense(
            (cfg.padded_vocab_size,), ("embed",), ("vocab",), init_std=cfg.init_std, dtype=dtype,
            param_dtype=param_dtype, name="lm_head")

        if decoder_tokens_BT is None:
            decoder_tokens_BT = jnp.zeros((encoder_tokens_BS.shape[0], 1), jnp.int32)
            if decoder_segment_ids_BT is None and encoder_segment_ids_BS is not None:
                decoder_segment_ids_BT = encoder_segment_ids_BS[:, :1]
        dec_seg_BT, dec_pos_BT = _defaults(decoder_tokens_BT, decoder_segment_ids_BT,
                                           decoder_positions_BT)

        def run_decoder():
            return decoder(embed(decoder_tokens_BT), dec_seg_BT, dec_pos_BT, encoded_BSD,
                           enc_seg_BS, deterministic=deterministic, decode=decode)

        if return_pooled:
            if self.is_initializing():  # declare the decoder and lm_head: one tree in every mode
                x_BTD = run_decoder()
                if lm_head is not None:
                    lm_head(x_BTD, weights_only=True)
            real_BS1 = (enc_seg_BS > 0)[..., None].astype(jnp.float32)
            sum_BD = jnp.sum(encoded_BSD.astype(jnp.float32) * real_BS1, axis=1)
            pooled_BD = sum_BD / jnp.maximum(jnp.sum(real_BS1, axis=1), 1.0)
            return layers.constrain(pooled_BD, "batch", "embed")

        x_BTD = run_decoder()
        if return_features:
            if lm_head is not None:
                lm_head(x_BTD, weights_only=True)  # declares its kernel; no matmul
            return x_BTD
        if cfg.tie_embeddings:
            x_BTD = x_BTD * cfg.d_model ** -0.5
            if return_hidden:
                return x_BTD, embed.embedding.astype(dtype)
            logits_BTV = embed.attend(x_BTD)
        else:
            if return_hidden:
                raise ValueError("return_hidden=True needs tied embeddings (the output table "
                                 "is the embedding); compute logits instead")
            logits_BTV = lm_head(x_BTD)
        logits_BTV = layers.constrain(logits_BTV, "batch", "length", "vocab")
        if cfg.padded_vocab_size != cfg.vocab_size:  # padded rows never win
            logits_BTV = logits_BTV[..., :cfg.vocab_size]
        return logits_BTV.astype(jnp.float32)


def row_flops(spec: T5Spec, cfg, input_shapes: dict) -> float:
    """Model FLOPs of one row (the convention of fmjax/models/flops.py); a classifier runs the
    encoder only."""
    encoder_shape = input_shapes.get("encoder_tokens_BS", input_shapes.get("tokens_BT"))
    decoder_shape = input_shapes.get("decoder_tokens_BT", (0, 0))
    return flops.encoder_decoder_flops_per_row(
        cfg, mlp_matrices=3 if spec.mlp_activation == "geglu" else 2,
        encoder_len=encoder_shape[1], decoder_len=decoder_shape[1])


SPEC = T5Spec(mlp_activation="relu")

models.register(models.Family(
    name="t5",
    make_module=lambda cfg: T5(cfg, SPEC),
    default_d_ff=lambda d: 4 * d,
    default_tie_embeddings=True,
    kind="encoder_decoder",
    pretrain_objective="span_corruption",
    default_init_std=1.0,  # multiplier of T5's fan-in init stds (HF initializer_factor)
    row_flops=functools.partial(row_flops, SPEC),
))
