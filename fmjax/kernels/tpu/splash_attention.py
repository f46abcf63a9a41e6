"""Self-attention through Pallas splash attention on TPU (`model.attention_impl = "splash"`).

Splash attention (jax.experimental.pallas.ops.tpu.splash_attention) computes softmax(q k^T) v
block by block in VMEM and never materialises the [B, H, T, S] scores, which XLA's attention
does on TPU (the main activation memory of long-sequence training). Blocks that the causal
mask hides are skipped. Packed rows keep their documents apart through segment ids, exactly
as fmjax's own mask (rows packed by fmjax number each segment's tokens in order, so the
kernel's index-causal mask equals the position-causal one).

The kernel runs per example (vmapped over the batch) and per device: under a mesh it is
wrapped in `jax.shard_map`, batch over (data, fsdp) and heads over tensor, like the logical
rules lay out q, k and v. Off TPU the same kernels run in Pallas interpret mode, which is slow
and meant for tests (tests/test_splash_attention.py checks values and gradients against
fmjax's attention core that way). Not supported: decoding with a KV cache (the model falls
back to XLA attention there), prefix-LM masks, additive biases (T5), cross-attention.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from fmjax import kernels, mesh as mesh_lib
from fmjax.kernels.tpu import trace_platform


MAX_BLOCK = 512  # positions per kernel block (query and key); smaller rows use one block


@functools.lru_cache(maxsize=None)
def _kernel(n_heads: int, length: int, causal: bool, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as kernel_lib, splash_attention_mask as mask_lib)
    shape = (length, length)
    head_mask = mask_lib.CausalMask(shape) if causal else mask_lib.FullMask(shape)
    block = min(MAX_BLOCK, length)
    sizes = kernel_lib.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                                  block_q_dkv=block, block_kv_dkv=block,
                                  block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    return kernel_lib.make_splash_mha(mask_lib.MultiHeadMask([head_mask] * n_heads),
                                      block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                      interpret=interpret)


def length_ok(length: int) -> bool:
    """The kernel's blocks must tile the row: at most MAX_BLOCK positions, or a multiple."""
    return length % min(MAX_BLOCK, length) == 0


def _local_attention(q_BTHK, k_BTHK, v_BTHK, segment_ids_BT, *, causal: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as kernel_lib)
    _, t, h, _ = q_BTHK.shape
    kernel = _kernel(h, t, causal, not trace_platform.compiling_for_tpu())
    to_bhtk = lambda x: jnp.transpose(x, (0, 2, 1, 3))  # noqa: E731
    segments = kernel_lib.SegmentIds(q=segment_ids_BT, kv=segment_ids_BT)
    out_BHTK = jax.vmap(kernel)(to_bhtk(q_BTHK), to_bhtk(k_BTHK), to_bhtk(v_BTHK),
                                segment_ids=segments)
    return jnp.transpose(out_BHTK, (0, 2, 1, 3))


def attention(q_BTHK, k_BTHK, v_BTHK, segment_ids_BT, *, causal: bool = True,
              scale: float | None = None):
    """softmax(scale q k^T, masked by segment (and causally)) v for self-attention with as
    many kv heads as query heads; [B, T, H, K] in and out."""
    scale = q_BTHK.shape[-1] ** -0.5 if scale is None else scale
    q_BTHK = q_BTHK * jnp.asarray(scale, q_BTHK.dtype)  # the kernel does not scale
    local = functools.partial(_local_attention, causal=causal)
    return mesh_lib.shard_attention(local, (q_BTHK, k_BTHK, v_BTHK), (segment_ids_BT,))


def _unsupported_length(length: int) -> str | None:
    if length_ok(length):
        return None
    return (f"splash attention needs model.seq_len = {length} to be at most {MAX_BLOCK} or a "
            "multiple of it")


kernels.register("splash_attention", kernels.Implementation(
    attention, platform="tpu", unsupported_length=_unsupported_length))
