"""Attention shared by every model family: masks over packed segments (causal, bidirectional,
prefix, cross), T5 relative-position buckets, fmjax's CPU attention core with a hand-written
backward, and the multi-head / grouped-query `Attention` module with its KV cache.

Shapes: B batch, T query length, S key length, H query heads, G kv heads, K head dim.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from fmjax.layers import Dense, constrain, matmul, normal_init, param_init, rope

Dtype = Any


def attention_mask(q_segment_BT, kv_segment_BS, q_pos_BT=None, kv_pos_BS=None, *,
                   causal=True, kv_prefix_BS=None, same_row=False):
    """[B, 1, T, S] bool: the key is real (segment > 0) and in the query's segment, and, when
    `causal`, at a position <= the query's or inside its segment's bidirectional prefix
    (`kv_prefix_BS` nonzero: prefix LM). `causal=False`: bidirectional (encoders) and
    cross-attention (decoder queries over encoder keys of the same segment id).

    `same_row` (causal self-attention over one row, T == S): keys after the query's index are
    hidden too, whatever the positions say. Rows packed by fmjax number each segment's tokens
    in order, so this changes nothing for them; it makes the mask lower-triangular by
    construction, which `causal_attention` relies on to skip the blocks above the diagonal."""
    same = q_segment_BT[:, :, None] == kv_segment_BS[:, None, :]
    real = kv_segment_BS[:, None, :] > 0
    if not causal:
        return (same & real)[:, None]
    visible = kv_pos_BS[:, None, :] <= q_pos_BT[:, :, None]
    if same_row:
        t, s = q_segment_BT.shape[1], kv_segment_BS.shape[1]
        visible = visible & jnp.tril(jnp.ones((t, s), bool))
    if kv_prefix_BS is not None:
        visible = visible | (kv_prefix_BS[:, None, :] > 0)
    return (same & visible & real)[:, None]


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


_MASKED = -1e30  # finite, so fully masked rows give a uniform (never NaN) softmax


def _transposed(x_BHTS):
    """x with its last two axes swapped in memory: the barrier keeps XLA from folding the
    transpose back into the consuming dot as a column-major operand, which XLA:CPU runs on
    a 2-3x slower path than its row-major GEMM kernels."""
    return jax.lax.optimization_barrier(jnp.swapaxes(x_BHTS, -1, -2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def attention_core(q_BTHK, k_BSHK, v_BSHK, mask_B1TS, bias_BHTS=None, scale=None):
    """softmax(scale q k^T + bias, masked) v in float32, with a hand-written backward pass.

    scale None = 1/sqrt(K); T5 passes 1.0 (its init absorbs the scaling). bias: an optional
    additive float [B or 1, H or 1, T, S] (T5's relative positions), differentiated too. Same
    math as the XLA path of `jax.nn.dot_product_attention`. Why custom: autodiff of the
    softmax gives XLA:CPU a large fused reduction over [B, H, T, S] that runs ~10x slower than
    a plain pass; the FlashAttention identity rowsum(dP * P) = rowsum(dO * O) replaces it
    with a reduction over the head dim K, and the probabilities saved from the forward pass
    are reused instead of recomputing exp."""
    return _attention_fwd(q_BTHK, k_BSHK, v_BSHK, mask_B1TS, bias_BHTS, scale)[0]


def _attention_scale(q_BTHK, scale):
    return q_BTHK.shape[-1] ** -0.5 if scale is None else scale


def _attention_fwd(q_BTHK, k_BSHK, v_BSHK, mask_B1TS, bias_BHTS, scale):
    scale = _attention_scale(q_BTHK, scale)
    logits_BHTS = jnp.einsum("bthk,bshk->bhts", q_BTHK * scale, k_BSHK,
                             preferred_element_type=jnp.float32)
    if bias_BHTS is not None:
        logits_BHTS = logits_BHTS + bias_BHTS.astype(jnp.float32)
    logits_BHTS = jnp.where(mask_B1TS, logits_BHTS, _MASKED)
    max_BHT1 = jnp.max(logits_BHTS, axis=-1, keepdims=True)
    unnorm_BHTS = jnp.exp(logits_BHTS - max_BHT1)
    probs_BHTS = unnorm_BHTS * (1.0 / jnp.sum(unnorm_BHTS, axis=-1, keepdims=True))
    out_BTHK = jnp.einsum("bhts,bshk->bthk", probs_BHTS.astype(v_BSHK.dtype), v_BSHK)
    return out_BTHK, (q_BTHK, k_BSHK, v_BSHK, mask_B1TS, bias_BHTS, probs_BHTS, out_BTHK)


def _attention_bwd(scale, res, dout_BTHK):
    q_BTHK, k_BSHK, v_BSHK, mask_B1TS, bias_BHTS, probs_BHTS, out_BTHK = res
    scale = _attention_scale(q_BTHK, scale)
    dprobs_BHTS = jnp.einsum("bthk,bshk->bhts", dout_BTHK, v_BSHK,
                             preferred_element_type=jnp.float32)
    delta_BTH = jnp.sum(dout_BTHK.astype(jnp.float32) * out_BTHK.astype(jnp.float32), axis=-1)
    delta_BHT1 = jnp.transpose(delta_BTH, (0, 2, 1))[..., None]
    dlogits32_BHTS = probs_BHTS * (dprobs_BHTS - delta_BHT1)
    dlogits_BHTS = dlogits32_BHTS.astype(q_BTHK.dtype)
    dq_BTHK = jnp.einsum("bhts,bshk->bthk", dlogits_BHTS, k_BSHK) * scale
    dk_BSHK = jnp.einsum("bhst,bthk->bshk", _transposed(dlogits_BHTS), q_BTHK * scale)
    dv_BSHK = jnp.einsum("bhst,bthk->bshk", _transposed(probs_BHTS.astype(dout_BTHK.dtype)),
                         dout_BTHK)
    dbias = None
    if bias_BHTS is not None:  # masked logits were replaced by a constant: no gradient there
        dbias_BHTS = jnp.where(mask_B1TS, dlogits32_BHTS, 0.0)
        broadcast = tuple(i for i, n in enumerate(bias_BHTS.shape) if n == 1)
        dbias = jnp.sum(dbias_BHTS, axis=broadcast, keepdims=True).astype(bias_BHTS.dtype)
    return (dq_BTHK.astype(q_BTHK.dtype), dk_BSHK.astype(k_BSHK.dtype),
            dv_BSHK.astype(v_BSHK.dtype), None, dbias)


attention_core.defvjp(_attention_fwd, _attention_bwd)


def causal_blocks(length: int, min_block: int = 64) -> int:
    """Query blocks for `causal_attention`: blocks of max(min_block, length / 8) positions
    (4 blocks at length 256: 5/8 of the full work), 1 when that does not divide `length`."""
    block = max(min_block, length // 8)
    return length // block if length % block == 0 else 1


def _causal_fwd(q_BTHK, k_BTHK, v_BTHK, mask_B1TT, scale, blocks):
    to_bhtk = lambda a: jnp.transpose(a, (0, 2, 1, 3))  # noqa: E731
    q_BHTK = to_bhtk(q_BTHK * _attention_scale(q_BTHK, scale))
    k_BHTK, v_BHTK = to_bhtk(k_BTHK), to_bhtk(v_BTHK)
    c = q_BHTK.shape[2] // blocks
    outs, probs = [], []
    for i in range(blocks):  # query block i sees keys [0, (i + 1) c): the rest is masked
        end = (i + 1) * c
        logits_BHCE = jnp.einsum("bhtk,bhsk->bhts", q_BHTK[:, :, i * c:end], k_BHTK[:, :, :end],
                                 preferred_element_type=jnp.float32)
        logits_BHCE = jnp.where(mask_B1TT[:, :, i * c:end, :end], logits_BHCE, _MASKED)
        unnorm_BHCE = jnp.exp(logits_BHCE - jnp.max(logits_BHCE, axis=-1, keepdims=True))
        probs_BHCE = unnorm_BHCE * (1.0 / jnp.sum(unnorm_BHCE, axis=-1, keepdims=True))
        outs.append(jnp.einsum("bhts,bhsk->bhtk", probs_BHCE.astype(v_BHTK.dtype),
                               v_BHTK[:, :, :end]))
        probs.append(probs_BHCE)
    out_BHTK = jnp.concatenate(outs, axis=2)
    return (jnp.transpose(out_BHTK, (0, 2, 1, 3)),
            (q_BHTK, k_BHTK, v_BHTK, tuple(probs), out_BHTK))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def causal_attention(q_BTHK, k_BTHK, v_BTHK, mask_B1TT, scale=None, blocks=4):
    """`attention_core` for causal self-attention whose mask is lower-triangular (see
    attention_mask's `same_row`), computing only what each query block can see: query block
    i of `blocks` attends to key blocks 0..i, so the work above the diagonal (3/8 of it with
    4 blocks) is skipped. Same results as attention_core up to float summation order, except
    for queries that see no key at all (padding): they average their block's visible prefix
    instead of every value, and no real token reads them. Backward as attention_core's,
    block by block."""
    return _causal_fwd(q_BTHK, k_BTHK, v_BTHK, mask_B1TT, scale, blocks)[0]


def _causal_bwd(scale, blocks, res, dout_BTHK):
    q_BHTK, k_BHTK, v_BHTK, probs, out_BHTK = res  # q already scaled
    dout_BHTK = jnp.transpose(dout_BTHK, (0, 2, 1, 3))
    delta_BHT1 = jnp.sum(dout_BHTK.astype(jnp.float32) * out_BHTK.astype(jnp.float32), axis=-1,
                         keepdims=True)
    c = q_BHTK.shape[2] // blocks
    dq, dk, dv = [], [0.0] * blocks, [0.0] * blocks
    for i, probs_BHCE in enumerate(probs):
        end = (i + 1) * c
        dout_BHCK = dout_BHTK[:, :, i * c:end]
        dprobs_BHCE = jnp.einsum("bhtk,bhsk->bhts", dout_BHCK, v_BHTK[:, :, :end],
                                 preferred_element_type=jnp.float32)
        dlogits_BHCE = (probs_BHCE * (dprobs_BHCE - delta_BHT1[:, :, i * c:end])).astype(
            q_BHTK.dtype)
        dq.append(jnp.einsum("bhts,bhsk->bhtk", dlogits_BHCE, k_BHTK[:, :, :end]))
        # keys' gradients contract the query axis: transposed explicitly, so that both GEMM
        # operands are row-major (XLA:CPU's fast kernels; 2-3x faster than the strided path)
        dk_BHEK = jnp.einsum("bhst,bhtk->bhsk", _transposed(dlogits_BHCE),
                             q_BHTK[:, :, i * c:end])
        dv_BHEK = jnp.einsum("bhst,bhtk->bhsk", _transposed(probs_BHCE.astype(dout_BHCK.dtype)),
                             dout_BHCK)
        for j in range(i + 1):
            dk[j] = dk[j] + dk_BHEK[:, :, j * c:(j + 1) * c]
            dv[j] = dv[j] + dv_BHEK[:, :, j * c:(j + 1) * c]
    to_bthk = lambda blocks_: jnp.transpose(jnp.concatenate(blocks_, axis=2), (0, 2, 1, 3))  # noqa: E731
    dq_BTHK = to_bthk(dq) * _attention_scale(q_BHTK, scale)
    return (dq_BTHK.astype(q_BHTK.dtype), to_bthk(dk).astype(k_BHTK.dtype),
            to_bthk(dv).astype(v_BHTK.dtype), None)


causal_attention.defvjp(lambda q, k, v, m, scale, blocks: _causal_fwd(q, k, v, m, scale, blocks),
                        _causal_bwd)


def _cpu_attention_chunks(batch: int) -> int:
    """Independent batch chunks to run attention in: ~2 per core on a single CPU device, 1
    elsewhere.

    Why: YNNPACK (XLA:CPU's matmul library) does not spread a batched matmul over cores, and
    attention's are many small ones ([T, K] x [K, S] per batch row and head). Independent
    chunks are run concurrently by XLA:CPU's executor, one per core (about 5% faster steps
    for configs/bench_small.py on 2 cores; rows do not interact, so results are identical)."""
    if jax.default_backend() != "cpu" or jax.sharding.get_abstract_mesh().size > 1:
        return 1  # accelerators parallelise inside the op; sharded batches stay whole
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores is None or cores < 2:
        return 1
    return max(c for c in range(1, min(batch, 2 * cores) + 1) if batch % c == 0)


def chunked_attention(q_BTHK, k_BSHK, v_BSHK, mask_B1TS, bias_BHTS=None, scale=None):
    """attention_core over `_cpu_attention_chunks` independent slices of the batch."""
    n = _cpu_attention_chunks(q_BTHK.shape[0])
    if n == 1:
        return attention_core(q_BTHK, k_BSHK, v_BSHK, mask_B1TS, bias_BHTS, scale)
    split = lambda a: (jnp.split(a, n, axis=0) if a is not None and a.shape[0] > 1
                       else [a] * n)  # noqa: E731  (a batch-1 bias broadcasts to every chunk)
    chunks = zip(*(split(a) for a in (q_BTHK, k_BSHK, v_BSHK, mask_B1TS, bias_BHTS)))
    return jnp.concatenate([attention_core(*chunk, scale) for chunk in chunks], axis=0)


def describe_implementation(impl: str, platform: str) -> str:
    """What `model.attention_impl` = impl runs on `platform` where the shapes allow it: `auto`
    resolved, and fused_cpu's fallback when its kernel does not build (for logs, benchmarks)."""
    if impl == "auto":
        impl = "fused_cpu" if platform == "cpu" else "xla"
    if impl == "fused_cpu":
        from fmjax import cpu_attention
        reason = cpu_attention.unavailable()
        if reason is not None:
            return f"fmjax (fused_cpu unavailable: {reason})"
    return impl


@jax.custom_vjp
def unstack_qkv(qkv_BTH3K):
    """(q, k, v) = qkv[:, :, :, i]. Custom backward: one stack of the three gradients, where
    autodiff of the slices pads each to the full shape and adds them (a pass ~8x slower)."""
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
        if self.n_kv_heads != self.n_heads:
            return q_proj(x_BTD), k_proj(x_BTD), v_proj(x_BTD), None
        (wq, bq), (wk, bk), (wv, bv) = (p(x_BTD, weights_only=True)
                                        for p in (q_proj, k_proj, v_proj))
        b, t, d = x_BTD.shape
        w_DH3K = jnp.stack([wq, wk, wv], axis=2)
        qkv_BTH3K = matmul(x_BTD.astype(self.dtype).reshape(b * t, d),
                           w_DH3K.reshape(d, -1)).reshape(b, t, self.n_heads, 3, self.head_dim)
        if self.use_bias:
            qkv_BTH3K = qkv_BTH3K + jnp.stack([bq, bk, bv], axis=1)
        return (*unstack_qkv(qkv_BTH3K), qkv_BTH3K)

    @nn.compact
    def __call__(self, x_BTD, segment_ids_BT, positions_BT, *, decode=False, deterministic=True,
                 prefix_mask_BT=None, bias_BHTS=None, kv_BSD=None, kv_segment_ids_BS=None):
        """x [B, T, D] -> [B, T, D]. prefix_mask_BT: nonzero on each segment's bidirectional
        prefix (causal self-attention only). bias_BHTS: added to the logits. kv_BSD (with
        kv_segment_ids_BS): cross-attention, keys and values from kv_BSD, a query sees the
        real keys of its own segment id."""
        cross = kv_BSD is not None
        qkv_BTH3K = None
        if cross:
            q_BTHK = self._proj("query", self.n_heads, "heads")(x_BTD)
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
            from fmjax import cpu_attention
            causal = self.causal and not cross and kv_prefix_BS is None
            if qkv_BTH3K is not None and not self.use_rope:  # read in place: no split copies
                out_BTHK = cpu_attention.attention_packed(
                    checkpoint_name(qkv_BTH3K, "qkv_proj"), mask_B1TS, scale=self.scale,
                    causal=causal)
            else:
                k_BSHK, v_BSHK = self._kv_per_query_head(k_BSGK, v_BSGK, q_BTHK.dtype)
                out_BTHK = cpu_attention.attention(q_BTHK, k_BSHK, v_BSHK, mask_B1TS,
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
        out_BTHK = constrain(out_BTHK, "batch", "length", "heads", "head_dim")
        out = Dense((x_BTD.shape[-1],), ("heads", "head_dim"), ("embed",), use_bias=self.use_bias,
                    init_std=self.out_init_std, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="out")(out_BTHK)
        return checkpoint_name(out, "attention_out")

    def _splash(self, q_BTHK, k_BSGK, v_BSGK, segment_ids_BT, unsupported: bool):
        from fmjax import splash_attention
        from fmjax.config import ConfigError
        if unsupported:
            raise ConfigError("config.model.attention_impl = 'splash': the splash kernel takes "
                              "self-attention masked by segments (and causally) only, not "
                              "cross-attention, prefix-LM masks or T5's position biases; set "
                              "--config.model.attention_impl=xla")
        k_BSHK, v_BSHK = self._kv_per_query_head(k_BSGK, v_BSGK, q_BTHK.dtype)
        return splash_attention.attention(q_BTHK, k_BSHK, v_BSHK, segment_ids_BT,
                                          causal=self.causal, scale=self.scale)

    def _kv_per_query_head(self, k_BSGK, v_BSGK, dtype):
        """Grouped-query keys and values repeated to one per query head, in `dtype`."""
        groups = self.n_heads // self.n_kv_heads
        return (jnp.repeat(k_BSGK.astype(dtype), groups, axis=2),
                jnp.repeat(v_BSGK.astype(dtype), groups, axis=2))

    def _use_fused_cpu(self, q_BTHK, k_BSGK, bias_BHTS, decode: bool) -> bool:
        """`fused_cpu`, and `auto` on CPU, take fmjax's fused CPU kernel (cpu_attention.py)
        where it applies and builds. Otherwise `auto` falls back to fmjax's XLA core (a build
        failure is logged once), and so does `fused_cpu` when decoding; any other reason is a
        ConfigError for `fused_cpu`."""
        if decode or self.implementation not in ("auto", "fused_cpu") or (
                self.implementation == "auto" and jax.default_backend() != "cpu"):
            return False
        from fmjax import cpu_attention
        reason = cpu_attention.unsupported(q_BTHK, k_BSGK, bias_BHTS)
        unbuilt = None if reason else cpu_attention.unavailable()
        reason = reason or unbuilt
        if reason and self.implementation == "fused_cpu":
            from fmjax.config import ConfigError
            raise ConfigError(f"config.model.attention_impl = 'fused_cpu': {reason}; set "
                              "--config.model.attention_impl=fmjax (fmjax's XLA attention)")
        if unbuilt:
            cpu_attention.log_fallback(unbuilt)
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

    def _update_cache(self, k_BTGK, v_BTGK, segment_ids_BT, positions_BT):
        """Writes this call's keys/values at the cache index and returns the whole cache (keys,
        values, segment ids, positions) and the index this call wrote at.

        The cache is created by an init call with `decode=True` on a [B, max_len] batch."""
        b, t = k_BTGK.shape[:2]
        is_init = not self.has_variable("cache", "cached_key")
        key = self.variable("cache", "cached_key", jnp.zeros, k_BTGK.shape, k_BTGK.dtype)
        value = self.variable("cache", "cached_value", jnp.zeros, v_BTGK.shape, v_BTGK.dtype)
        seg = self.variable("cache", "segment_ids", jnp.zeros, (b, t), jnp.int32)
        pos = self.variable("cache", "positions", jnp.zeros, (b, t), jnp.int32)
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        if is_init:
            return k_BTGK, v_BTGK, segment_ids_BT, positions_BT, 0
        i = index.value
        key.value = jax.lax.dynamic_update_slice(key.value, k_BTGK.astype(key.value.dtype),
                                                 (0, i, 0, 0))
        value.value = jax.lax.dynamic_update_slice(value.value, v_BTGK.astype(value.value.dtype),
                                                   (0, i, 0, 0))
        seg.value = jax.lax.dynamic_update_slice(seg.value, segment_ids_BT.astype(jnp.int32), (0, i))
        pos.value = jax.lax.dynamic_update_slice(pos.value, positions_BT.astype(jnp.int32), (0, i))
        index.value = i + t
        return key.value, value.value, seg.value, pos.value, i
