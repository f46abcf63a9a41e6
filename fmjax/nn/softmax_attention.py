"""fmjax's attention core in XLA, the CPU path before (and without) the fused kernel, and
`model.attention_impl = "fmjax"`: softmax attention with a hand-written backward
(`attention_core`), its causal block-skipping variant (`causal_attention`) and independent
batch chunks (`chunked_attention`). fmjax/nn/attention.py's `Attention` module picks among these,
fmjax/kernels/cpu/attention.py (the fused C++ kernel) and jax.nn.dot_product_attention.

Shapes: B batch, T query length, S key length, H heads, K head dim.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

_MASKED = -1e30  # finite, so fully masked rows give a uniform (never NaN) softmax


def _transposed(x_BHTS):
    """x with its last two axes swapped in memory: the barrier keeps XLA from folding the
    transpose back into the consuming dot as a column-major operand, which XLA:CPU runs on
    a slower path than its row-major GEMM kernels."""
    return jax.lax.optimization_barrier(jnp.swapaxes(x_BHTS, -1, -2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def attention_core(q_BTHK, k_BSHK, v_BSHK, mask_B1TS, bias_BHTS=None, scale=None):
    """softmax(scale q k^T + bias, masked) v in float32, with a hand-written backward pass.

    scale None = 1/sqrt(K); T5 passes 1.0 (its init absorbs the scaling). bias: an optional
    additive float [B or 1, H or 1, T, S] (T5's relative positions), differentiated too. Same
    math as the XLA path of `jax.nn.dot_product_attention`. Why custom: autodiff of the
    softmax gives XLA:CPU a large fused reduction over [B, H, T, S] that runs far slower than
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
        # operands are row-major (XLA:CPU's fast GEMM kernels take no strided operand)
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
    chunks are run concurrently by XLA:CPU's executor, one per core (rows do not interact,
    so results are identical)."""
    if jax.default_backend() != "cpu" or jax.sharding.get_abstract_mesh().size > 1:
        return 1  # accelerators parallelise inside the op; sharded batches stay whole
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores is None or cores < 2:
        return 1
    return max(c for c in range(1, min(batch, 2 * cores) + 1) if batch % c == 0)


def chunked_attention(q_BTHK, k_BSHK, v_BSHK, mask_B1TS, bias_BHTS=None, scale=None):
    """attention_core over `_cpu_attention_chunks` independent slices of the batch; one query
    per row (a decode step) stays whole: its matmuls are too small to gain from the split."""
    n = _cpu_attention_chunks(q_BTHK.shape[0]) if q_BTHK.shape[1] > 1 else 1
    if n == 1:
        return attention_core(q_BTHK, k_BSHK, v_BSHK, mask_B1TS, bias_BHTS, scale)
    split = lambda a: (jnp.split(a, n, axis=0) if a is not None and a.shape[0] > 1
                       else [a] * n)  # noqa: E731  (a batch-1 bias broadcasts to every chunk)
    chunks = zip(*(split(a) for a in (q_BTHK, k_BSHK, v_BSHK, mask_B1TS, bias_BHTS)))
    return jnp.concatenate([attention_core(*chunk, scale) for chunk in chunks], axis=0)
