"""Attention shared by every model family: masks over packed segments (causal, bidirectional,
prefix, cross), T5 relative-position buckets, and the multi-head / grouped-query `Attention`
module with its KV cache, which picks the attention computation by `model.attention_impl`:
the `attention` kernels registered at fmjax/kernels/ (fused CPU, splash on TPU), fmjax's XLA
core (fmjax/nn/softmax_attention.py) or jax.nn.dot_product_attention.

Shapes: B batch, T query length, S key length, H query heads, G kv heads, K head dim.
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from fmjax import kernels
from fmjax.config import ConfigError
from fmjax.nn import context_attention, context_parallel
from fmjax.nn.masks import attention_mask
from fmjax.nn.softmax_attention import causal_attention, causal_blocks, chunked_attention
from fmjax.nn.layers import Dense, constrain, matmul, normal_init, param_init, rope

Dtype = Any


def relative_position_bucket(relative_position, *, bidirectional: bool, num_buckets: int = 32,
                             max_distance: int = 128):
    """T5's bucket of each relative position (key position - query position), int32.

    Hugging Face `T5Attention._relative_position_bucket`: bidirectional halves the buckets
    (the upper half for keys after the query); causal maps every later key to bucket 0; then
    distances below max_exact = buckets / 2 get their own bucket and larger ones share
    logarithmic buckets up to max_distance. The log branch depends only on the distance, which
    is clipped at max_distance (the last bucket from there on), so it is a table of
    max_distance + 1 integers computed here in numpy with HF's float32 arithmetic: the buckets
    are exact integers at run time, independent of the backend's log."""
    n = num_buckets // 2 if bidirectional else num_buckets
    max_exact = n // 2
    dist = np.arange(max_distance + 1)
    with np.errstate(divide="ignore"):
        scaled = np.log((dist.astype(np.float32) / np.float32(max_exact)).astype(np.float64))
        large = (scaled.astype(np.float32) / np.float32(math.log(max_distance / max_exact))
                 * np.float32(n - max_exact))
    large = np.minimum(max_exact + np.trunc(np.where(dist < max_exact, 0, large)), n - 1)
    table = jnp.asarray(np.where(dist < max_exact, dist, large).astype(np.int32))
    rel = jnp.asarray(relative_position, jnp.int32)
    if bidirectional:
        offset = jnp.where(rel > 0, n, 0).astype(jnp.int32)
        dist = jnp.abs(rel)
    else:
        offset = jnp.zeros_like(rel)
        dist = -jnp.minimum(rel, 0)
    return offset + table[jnp.minimum(dist, max_distance)]


class RelativePositionBias(nn.Module):
    """T5 relative attention bias: a [buckets, H] table -> additive logits bias [B, H, T, S]
    (float32) from the query and key positions (per-segment positions of packed rows)."""
    n_heads: int
    bidirectional: bool
    num_buckets: int = 32
    max_distance: int = 128
    init_std: float = 0.02
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, q_pos_BT, kv_pos_BS):
        table_NH = self.param("embedding",
                              param_init(normal_init(self.init_std), ("relative_buckets", "heads")),
                              (self.num_buckets, self.n_heads), self.param_dtype)
        bucket_BTS = relative_position_bucket(
            kv_pos_BS[:, None, :] - q_pos_BT[:, :, None], bidirectional=self.bidirectional,
            num_buckets=self.num_buckets, max_distance=self.max_distance)
        bias_BTSH = jnp.take(table_NH.astype(jnp.float32), bucket_BTS, axis=0)
        return constrain(jnp.transpose(bias_BTSH, (0, 3, 1, 2)), "batch", "heads", None, None)


@functools.cache
def _log_fallback(reason: str) -> None:
    logging.warning("fmjax: attention uses the XLA core, not the fused CPU kernel: %s", reason)


IMPLEMENTATIONS = ("auto", "fused_cpu", "fmjax", "xla", "cudnn", "splash")  # model.attention_impl


def check_implementation(impl: str, seq_len: int) -> None:
    """ConfigError unless `model.attention_impl` = impl can run rows of `seq_len` tokens
    (checked before anything compiles; shape limits seen only when tracing stay there)."""
    if impl not in IMPLEMENTATIONS:
        raise ConfigError(f"config.model.attention_impl = {impl!r}: unknown implementation; "
                          f"use one of {', '.join(IMPLEMENTATIONS)}")
    splash = kernels.get("splash_attention") if impl == "splash" else None
    reason = splash and splash.unsupported_length(seq_len)
    if reason:
        raise ConfigError(f"config.model.attention_impl = 'splash': {reason}; set "
                          "--config.model.attention_impl=xla, or pad model.seq_len")


def describe_implementation(impl: str, platform: str, context: int = 1) -> str:
    """What `model.attention_impl` = impl runs on `platform` where the shapes allow it: `auto`
    resolved, fused_cpu's fallback when its kernel does not build, and self-attention's path
    when the sequence is split over `context` shards (for logs, benchmarks)."""
    if context > 1:
        return f"context all-gather over {context} shards (fmjax/nn/context_attention.py, XLA)"
    if impl == "auto":
        impl = "fused_cpu" if platform == "cpu" else "xla"
    if impl == "fused_cpu":
        reason = kernels.unavailable("attention")
        if reason is not None:
            return f"fmjax (fused_cpu unavailable: {reason})"
    return impl


@jax.custom_vjp
def unstack_qkv(qkv_BTH3K):
    """(q, k, v) = qkv[:, :, :, i]. Custom backward: one stack of the three gradients, where
    autodiff of the slices pads each to the full shape and adds them (extra full-size passes)."""
    return tuple(qkv_BTH3K[:, :, :, i] for i in range(3))


unstack_qkv.defvjp(lambda qkv_BTH3K: (unstack_qkv(qkv_BTH3K), None),
                   lambda _, grads: (jnp.stack(grads, axis=3),))


class Attention(nn.Module):
    """Multi-head / grouped-query attention: self-attention (causal, prefix-LM or
    bidirectional) with optional RoPE, bias and a KV cache, or cross-attention over `kv_BSD`.
    Options for T5: an additive logits bias (relative positions) and `scale` = 1.0."""
    n_heads: int
    n_kv_heads: int
    head_dim: int
    use_bias: bool = False
    use_rope: bool = False
    rope_theta: float = 10000.0
    dropout: float = 0.0
    init_std: float = 0.02
    out_init_std: float = 0.02
    implementation: str = "auto"  # auto | fused_cpu | fmjax | xla | cudnn | splash
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    causal: bool = True  # self-attention masks later keys (False: bidirectional encoder)
    scale: float | None = None  # logits = scale * q.k (+ bias); None = 1/sqrt(head_dim)
    query_init_std: float | None = None  # query kernel init std; None = init_std (T5 differs)
    cross: bool = False  # cross-attention (also implied by kv_BSD); decoding may omit kv_BSD

    def _proj(self, name, heads, head_axis):
        std = self.init_std
        if name == "query" and self.query_init_std is not None:
            std = self.query_init_std
        return Dense((heads, self.head_dim), ("embed",), (head_axis, "head_dim"),
                     use_bias=self.use_bias, init_std=std, dtype=self.dtype,
                     param_dtype=self.param_dtype, name=name)

    def _qkv(self, x_BTD):
        """Query, key and value projections, and the three stacked [B, T, H, 3, K] (None with
        fewer kv heads). With as many kv heads as query heads they run as ONE GEMM against
        the three kernels stacked at compute time ([D, H, 3, K]: heads stay the major, sharded
        axis of the flattened outputs): a 3x wider GEMM runs closer to peak on CPU, and its
        backward is one GEMM for dx instead of three plus two adds."""
        q_proj = self._proj("query", self.n_heads, "heads")
        k_proj = self._proj("key", self.n_kv_heads, "kv_heads")
        v_proj = self._proj("value", self.n_kv_heads, "kv_heads")
        if self.n_kv_heads != self.n_heads or context_parallel.context_size() > 1:
            return q_proj(x_BTD), k_proj(x_BTD), v_proj(x_BTD), None
        (wq, bq), (wk, bk), (wv, bv) = (p(x_BTD, weights_only=True)
                                        for p in (q_proj, k_proj, v_proj))
        b, t, d = x_BTD.shape
        w_DH3K = jnp.stack([wq, wk, wv], axis=2)
        bias = jnp.stack([bq, bk, bv], axis=1).reshape(-1) if self.use_bias else None  # [H*3*K]
        qkv_BTH3K = matmul(x_BTD.astype(self.dtype).reshape(b * t, d), w_DH3K.reshape(d, -1),
                           bias).reshape(b, t, self.n_heads, 3, self.head_dim)
        return (*unstack_qkv(qkv_BTH3K), qkv_BTH3K)

    @nn.compact
    def __call__(self, x_BTD, segment_ids_BT, positions_BT, *, decode=False, deterministic=True,
                 prefix_mask_BT=None, bias_BHTS=None, kv_BSD=None, kv_segment_ids_BS=None):
        """x [B, T, D] -> [B, T, D]. prefix_mask_BT: nonzero on each segment's bidirectional
        prefix (causal self-attention only). bias_BHTS: added to the logits. kv_BSD (with
        kv_segment_ids_BS): cross-attention, keys and values from kv_BSD, a query sees the
        real keys of its own segment id. Cross-attention with `decode`: the keys and values of
        kv_BSD are computed once and cached (`cross_key`, `cross_value`, `cross_segment_ids`);
        later decode calls pass kv_BSD = None and read them from the cache."""
        cross = self.cross or kv_BSD is not None
        qkv_BTH3K = None
        if cross:
            q_BTHK = self._proj("query", self.n_heads, "heads")(x_BTD)
            if decode:
                k_BTGK, v_BTGK, kv_segment_ids_BS = self._cross_cache(kv_BSD, kv_segment_ids_BS)
            else:
                k_BTGK = self._proj("key", self.n_kv_heads, "kv_heads")(kv_BSD)
                v_BTGK = self._proj("value", self.n_kv_heads, "kv_heads")(kv_BSD)
        else:
            q_BTHK, k_BTGK, v_BTGK, qkv_BTH3K = self._qkv(x_BTD)
        q_BTHK = checkpoint_name(q_BTHK, "query_proj")
        k_BTGK = checkpoint_name(k_BTGK, "key_proj")
        v_BTGK = checkpoint_name(v_BTGK, "value_proj")
        if self.use_rope and not cross:
            q_BTHK = rope(q_BTHK, positions_BT, self.rope_theta)
            k_BTGK = rope(k_BTGK, positions_BT, self.rope_theta)
        q_BTHK = constrain(q_BTHK, "batch", "length", "heads", "head_dim")
        k_BTGK = constrain(k_BTGK, "batch", "length", "kv_heads", "head_dim")
        v_BTGK = constrain(v_BTGK, "batch", "length", "kv_heads", "head_dim")

        if not decode and context_parallel.splits(x_BTD.shape[1]):  # the sequence is split
            out_BTHK = self._context_parallel(q_BTHK, k_BTGK, v_BTGK, segment_ids_BT,
                                              positions_BT, prefix_mask_BT, cross, bias_BHTS,
                                              deterministic)
            return self._output(out_BTHK, x_BTD.shape[-1])

        kv_prefix_BS = prefix_mask_BT
        if cross:
            k_BSGK, v_BSGK = k_BTGK, v_BTGK
            mask_B1TS = attention_mask(segment_ids_BT, kv_segment_ids_BS, causal=False)
        else:
            if decode:
                k_BSGK, v_BSGK, kv_seg_BS, kv_pos_BS, index = self._update_cache(
                    k_BTGK, v_BTGK, segment_ids_BT, positions_BT)
                if prefix_mask_BT is not None:  # later keys can only be this call's tokens
                    kv_prefix_BS = jax.lax.dynamic_update_slice(
                        jnp.zeros(kv_seg_BS.shape, jnp.int32), prefix_mask_BT.astype(jnp.int32),
                        (0, index))
            else:
                k_BSGK, v_BSGK, kv_seg_BS, kv_pos_BS = (k_BTGK, v_BTGK, segment_ids_BT,
                                                        positions_BT)
            mask_B1TS = attention_mask(segment_ids_BT, kv_seg_BS, positions_BT, kv_pos_BS,
                                       causal=self.causal, kv_prefix_BS=kv_prefix_BS,
                                       same_row=not decode)

        if self.dropout > 0 and not deterministic:
            out_BTHK = self._attend_with_dropout(q_BTHK, k_BSGK, v_BSGK, mask_B1TS, bias_BHTS)
        elif self.implementation == "splash" and not decode:  # decoding: XLA below
            out_BTHK = self._splash(q_BTHK, k_BSGK, v_BSGK, segment_ids_BT,
                                    cross or kv_prefix_BS is not None or bias_BHTS is not None)
        elif self._use_fused_cpu(q_BTHK, k_BSGK, bias_BHTS, decode):
            causal = self.causal and not cross and kv_prefix_BS is None
            if qkv_BTH3K is not None and not self.use_rope:  # read in place: no split copies
                out_BTHK = kernels.run("attention_packed", checkpoint_name(qkv_BTH3K, "qkv_proj"),
                                       mask_B1TS, scale=self.scale, causal=causal)
            else:
                k_BSHK, v_BSHK = self._kv_per_query_head(k_BSGK, v_BSGK, q_BTHK.dtype)
                out_BTHK = kernels.run("attention", q_BTHK, k_BSHK, v_BSHK, mask_B1TS,
                                       scale=self.scale, causal=causal)
        elif self._use_fmjax_core():
            k_BSHK, v_BSHK = self._kv_per_query_head(k_BSGK, v_BSGK, q_BTHK.dtype)
            blocks = causal_blocks(q_BTHK.shape[1])
            if (self.causal and not cross and not decode and kv_prefix_BS is None
                    and bias_BHTS is None and blocks > 1):
                out_BTHK = causal_attention(q_BTHK, k_BSHK, v_BSHK, mask_B1TS, self.scale, blocks)
            else:
                out_BTHK = chunked_attention(q_BTHK, k_BSHK, v_BSHK, mask_B1TS, bias_BHTS,
                                             self.scale)
        else:
            out_BTHK = jax.nn.dot_product_attention(
                q_BTHK, k_BSGK.astype(q_BTHK.dtype), v_BSGK.astype(q_BTHK.dtype),
                bias=bias_BHTS, mask=mask_B1TS, scale=self.scale,
                implementation="cudnn" if self.implementation == "cudnn" else None)
        return self._output(out_BTHK, x_BTD.shape[-1])

    def _output(self, out_BTHK, d_model: int):
        out_BTHK = constrain(out_BTHK, "batch", "length", "heads", "head_dim")
        out = Dense((d_model,), ("heads", "head_dim"), ("embed",), use_bias=self.use_bias,
                    init_std=self.out_init_std, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="out")(out_BTHK)
        return checkpoint_name(out, "attention_out")

    def _context_parallel(self, q_BTHK, k_BTGK, v_BTGK, segment_ids_BT, positions_BT,
                          prefix_mask_BT, cross: bool, bias_BHTS, deterministic: bool):
        """Self-attention with the sequence split over mesh.context (context_attention.py),
        in the row order the model declared (context_parallel.row_layout). `auto`, `fmjax` and
        `xla` run it; what it cannot run is a ConfigError naming the field (config.validate
        refuses most of it earlier)."""
        shards = context_parallel.context_size()
        refusal = None
        if cross or bias_BHTS is not None:
            refusal = ("cross-attention and T5's relative position biases are not implemented "
                       "under context parallelism (encoder-decoder models)")
        elif self.implementation not in context_parallel.IMPLEMENTATIONS:
            refusal = (f"model.attention_impl = {self.implementation!r} cannot split the "
                       "sequence (its kernel needs whole rows); use auto, fmjax or xla")
        elif self.dropout > 0 and not deterministic:
            refusal = ("attention dropout is not implemented under context parallelism; set "
                       "--config.model.dropout=0")
        if refusal:
            raise ConfigError(f"config.mesh.context = {shards}: {refusal}; or set "
                              "--config.mesh.context=1")
        return context_attention.context_attention(
            q_BTHK, k_BTGK, v_BTGK, segment_ids_BT, positions_BT, prefix_mask_BT,
            causal=self.causal, scale=self.scale, layout=context_parallel.row_layout())

    def _splash(self, q_BTHK, k_BSGK, v_BSGK, segment_ids_BT, unsupported: bool):
        if unsupported:
            raise ConfigError("config.model.attention_impl = 'splash': the splash kernel takes "
                              "self-attention masked by segments (and causally) only, not "
                              "cross-attention, prefix-LM masks or T5's position biases; set "
                              "--config.model.attention_impl=xla")
        k_BSHK, v_BSHK = self._kv_per_query_head(k_BSGK, v_BSGK, q_BTHK.dtype)
        return kernels.run("splash_attention", q_BTHK, k_BSHK, v_BSHK, segment_ids_BT,
                           causal=self.causal, scale=self.scale)

    def _kv_per_query_head(self, k_BSGK, v_BSGK, dtype):
        """Grouped-query keys and values repeated to one per query head, in `dtype`."""
        groups = self.n_heads // self.n_kv_heads
        return (jnp.repeat(k_BSGK.astype(dtype), groups, axis=2),
                jnp.repeat(v_BSGK.astype(dtype), groups, axis=2))

    def _use_fused_cpu(self, q_BTHK, k_BSGK, bias_BHTS, decode: bool) -> bool:
        """`fused_cpu`, and `auto` on CPU, take the fused `attention` kernel (fmjax/kernels/)
        where it applies and builds. Otherwise `auto` falls back to fmjax's XLA core (a build
        failure is logged once), and so does `fused_cpu` when decoding; any other reason is a
        ConfigError for `fused_cpu`."""
        if decode or self.implementation not in ("auto", "fused_cpu") or (
                self.implementation == "auto" and jax.default_backend() != "cpu"):
            return False
        fused = kernels.get("attention")
        reason = (fused.unsupported(q_BTHK, k_BSGK, bias_BHTS) if fused
                  else "no fused attention kernel is registered")
        unbuilt = None if reason else fused.unavailable()
        reason = reason or unbuilt
        if reason and self.implementation == "fused_cpu":
            raise ConfigError(f"config.model.attention_impl = 'fused_cpu': {reason}; set "
                              "--config.model.attention_impl=fmjax (fmjax's XLA attention)")
        if unbuilt:
            _log_fallback(unbuilt)
        return reason is None

    def _use_fmjax_core(self) -> bool:
        """`auto` takes fmjax's own attention (hand-written backward, batch chunks) on CPU, where
        it is measured faster, and jax.nn.dot_product_attention's XLA path elsewhere; so does
        `fused_cpu` where its kernel does not apply."""
        if self.implementation == "auto":
            return jax.default_backend() == "cpu"
        return self.implementation in ("fmjax", "fused_cpu")

    def _attend_with_dropout(self, q_BTHK, k_BSGK, v_BSGK, mask_B1TS, bias_BHTS=None):
        k_BSHK, v_BSHK = self._kv_per_query_head(k_BSGK, v_BSGK, k_BSGK.dtype)
        logits_BHTS = jnp.einsum("bthk,bshk->bhts", q_BTHK, k_BSHK)
        if self.scale is None:
            logits_BHTS = logits_BHTS / jnp.sqrt(self.head_dim)
        else:
            logits_BHTS = logits_BHTS * self.scale
        logits_BHTS = logits_BHTS.astype(jnp.float32)
        if bias_BHTS is not None:
            logits_BHTS = logits_BHTS + bias_BHTS.astype(jnp.float32)
        logits_BHTS = jnp.where(mask_B1TS, logits_BHTS, -1e30)
        probs_BHTS = jax.nn.softmax(logits_BHTS, axis=-1)
        probs_BHTS = nn.Dropout(self.dropout)(probs_BHTS, deterministic=False)
        return jnp.einsum("bhts,bshk->bthk", probs_BHTS.astype(v_BSHK.dtype), v_BSHK)

    def _cross_cache(self, kv_BSD, kv_segment_ids_BS):
        """Cross-attention keys, values and key segment ids while decoding: projected from
        kv_BSD and written to the cache when it is given (the first decode call), else read
        from the cache (every later step: the encoder output does not change)."""
        if kv_BSD is None:
            if not self.has_variable("cache", "cross_key"):
                raise ValueError("cross-attention decoding without kv_BSD reads the cached "
                                 "keys, but the cache has none; pass the encoder output on "
                                 "the first decode call")
            return (self.get_variable("cache", "cross_key"),
                    self.get_variable("cache", "cross_value"),
                    self.get_variable("cache", "cross_segment_ids"))
        k_BSGK = self._proj("key", self.n_kv_heads, "kv_heads")(kv_BSD)
        v_BSGK = self._proj("value", self.n_kv_heads, "kv_heads")(kv_BSD)
        if kv_segment_ids_BS is None:
            kv_segment_ids_BS = jnp.ones(kv_BSD.shape[:2], jnp.int32)
        for name, value in (("cross_key", k_BSGK), ("cross_value", v_BSGK),
                            ("cross_segment_ids", kv_segment_ids_BS.astype(jnp.int32))):
            self.put_variable("cache", name, value)
        return k_BSGK, v_BSGK, kv_segment_ids_BS

    def _update_cache(self, k_BTGK, v_BTGK, segment_ids_BT, positions_BT):
        """Writes this call's keys/values at the cache index and returns the whole cache (keys,
        values, segment ids, positions) and the index this call wrote at.

        The cache is created by an init call with `decode=True` on a [B, max_len] batch."""
        b, t, g, d = k_BTGK.shape
        is_init = not self.has_variable("cache", "cached_key")
        # head-major [B, G, S, K]: the layout attention's batched matmuls read, so a decode
        # step uses the cache in place instead of re-laying it out per layer per step
        key = self.variable("cache", "cached_key", jnp.zeros, (b, g, t, d), k_BTGK.dtype)
        value = self.variable("cache", "cached_value", jnp.zeros, (b, g, t, d), v_BTGK.dtype)
        seg = self.variable("cache", "segment_ids", jnp.zeros, (b, t), jnp.int32)
        pos = self.variable("cache", "positions", jnp.zeros, (b, t), jnp.int32)
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        if is_init:
            return k_BTGK, v_BTGK, segment_ids_BT, positions_BT, 0
        i = index.value
        head_major = lambda x_BTGK: jnp.swapaxes(x_BTGK, 1, 2).astype(key.value.dtype)  # noqa: E731
        key.value = jax.lax.dynamic_update_slice(key.value, head_major(k_BTGK), (0, 0, i, 0))
        value.value = jax.lax.dynamic_update_slice(value.value, head_major(v_BTGK), (0, 0, i, 0))
        seg.value = jax.lax.dynamic_update_slice(seg.value, segment_ids_BT.astype(jnp.int32), (0, i))
        pos.value = jax.lax.dynamic_update_slice(pos.value, positions_BT.astype(jnp.int32), (0, i))
        index.value = i + t
        return (jnp.swapaxes(key.value, 1, 2), jnp.swapaxes(value.value, 1, 2), seg.value,
                pos.value, i)
