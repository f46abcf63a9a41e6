"""fmjax's fused attention kernel for XLA:CPU (fmjax/kernels/cpu/attention.cc), float32.

XLA:CPU runs attention's many small batched matmuls ([T, K] x [K, S] per batch row and head)
on one core, and computes causal attention's hidden half too. The kernel spreads the (batch,
head) pairs over XLA's intra-op threads, keeps each head's scores in cache, and skips what a
causal mask hides tile by tile. The backward pass recomputes the probabilities from the saved
log-sum-exp instead of storing them. `model.attention_impl = "auto"` takes it on CPU when it
builds (else fmjax's XLA attention core, with the reason logged once); "fused_cpu" asks for
it and fails with the reason otherwise.

The C++ source is compiled on first use with the host's C++ compiler (fmjax/kernels/cpu/ffi.py).
Under a mesh the kernel runs per device (mesh.shard_attention). tests/test_cpu_attention.py
checks values and gradients against fmjax/nn/softmax_attention.py (attention_core).
"""
from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from fmjax import kernels
from fmjax.kernels.cpu import ffi as cpu_ffi
from fmjax import mesh as mesh_lib

SOURCE = pathlib.Path(__file__).with_name("attention.cc")
MULTIPLE = cpu_ffi.MULTIPLE  # head dim and key length: whole vectors of the widest build
_TARGETS = {"fmjax_cpu_attention_fwd": "FmjaxAttentionForward",
            "fmjax_cpu_attention_bwd": "FmjaxAttentionBackward",
            "fmjax_cpu_attention_fwd_packed": "FmjaxAttentionForwardPacked",
            "fmjax_cpu_attention_bwd_packed": "FmjaxAttentionBackwardPacked"}

unavailable = cpu_ffi.loader(SOURCE, _TARGETS)  # None once built and registered, else why not


def unsupported(q_BTHK, k_BSHK, bias=None) -> str | None:
    """None if the kernel takes these operands, else why not."""
    if bias is not None:
        return "additive logits biases (T5) are not supported"
    if q_BTHK.dtype != jnp.float32:
        return f"dtype {q_BTHK.dtype} (the kernel computes in float32)"
    if q_BTHK.shape[-1] % MULTIPLE or k_BSHK.shape[1] % MULTIPLE:
        return (f"head dim {q_BTHK.shape[-1]} and key length {k_BSHK.shape[1]} must be "
                f"multiples of {MULTIPLE}")
    return None


def _call(target, out_shapes, *args, scale, causal):
    return jax.ffi.ffi_call(target, cpu_ffi.f32(*out_shapes))(*args, scale=np.float32(scale),
                                                        causal=causal)


# q, k, v as separate arrays
def _forward(q_BTHK, k_BSHK, v_BSHK, mask_B1TS, scale, causal):
    b, t, h, _ = q_BTHK.shape
    out_BTHK, lse_BHT = _call("fmjax_cpu_attention_fwd", (q_BTHK.shape, (b, h, t)), q_BTHK,
                              k_BSHK, v_BSHK, mask_B1TS, scale=scale, causal=causal)
    return out_BTHK, (q_BTHK, k_BSHK, v_BSHK, mask_B1TS, out_BTHK, lse_BHT)


def _backward(scale, causal, res, dout_BTHK):
    grads = _call("fmjax_cpu_attention_bwd", [x.shape for x in res[:3]], *res, dout_BTHK,
                  scale=scale, causal=causal)
    return (*grads, None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _separate(q_BTHK, k_BSHK, v_BSHK, mask_B1TS, scale, causal):
    return _forward(q_BTHK, k_BSHK, v_BSHK, mask_B1TS, scale, causal)[0]


_separate.defvjp(_forward, _backward)


# q, k, v stacked in one [B, T, H, 3, K] array (self-attention)
def _forward_packed(qkv_BTH3K, mask_B1TT, scale, causal):
    b, t, h, _, k = qkv_BTH3K.shape
    out_BTHK, lse_BHT = _call("fmjax_cpu_attention_fwd_packed", ((b, t, h, k), (b, h, t)),
                              qkv_BTH3K, mask_B1TT, scale=scale, causal=causal)
    return out_BTHK, (qkv_BTH3K, mask_B1TT, out_BTHK, lse_BHT)


def _backward_packed(scale, causal, res, dout_BTHK):
    dqkv_BTH3K, = _call("fmjax_cpu_attention_bwd_packed", (res[0].shape,), *res, dout_BTHK,
                        scale=scale, causal=causal)
    return dqkv_BTH3K, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _packed(qkv_BTH3K, mask_B1TT, scale, causal):
    return _forward_packed(qkv_BTH3K, mask_B1TT, scale, causal)[0]


_packed.defvjp(_forward_packed, _backward_packed)


def _require():
    reason = unavailable()  # builds and registers the kernel on first use
    if reason is not None:
        raise RuntimeError(f"fmjax's CPU attention kernel is unavailable: {reason}")


def attention(q_BTHK, k_BSHK, v_BSHK, mask_B1TS, *, scale=None, causal=False):
    """softmax(scale q k^T, masked) v: q [B, T, H, K], k and v [B, S, H, K] (as many kv heads
    as query heads), mask [B, 1, T, S] bool. `causal`: the caller promises the mask hides
    every key after the query's index (attention_mask's `same_row`), so that work is skipped.
    Queries that see no key get zeros. Check `unsupported()` first."""
    _require()
    b, t, _, k = q_BTHK.shape
    scale = k ** -0.5 if scale is None else float(scale)
    mask_B1TS = jnp.broadcast_to(mask_B1TS, (b, 1, t, k_BSHK.shape[1]))
    local = lambda q, k, v, m: _separate(q, k, v, m, scale, bool(causal))  # noqa: E731
    return mesh_lib.shard_attention(local, (q_BTHK, k_BSHK, v_BSHK), (mask_B1TS,))


def attention_packed(qkv_BTH3K, mask_B1TT, *, scale=None, causal=False):
    """`attention` for self-attention with q, k, v stacked [B, T, H, 3, K] as the fused
    projection makes them: the kernel reads the heads in place and writes one [B, T, H, 3, K]
    gradient, so neither the split nor the stack of the gradients is a copy."""
    _require()
    b, t, _, _, k = qkv_BTH3K.shape
    scale = k ** -0.5 if scale is None else float(scale)
    mask_B1TT = jnp.broadcast_to(mask_B1TT, (b, 1, t, t))
    local = lambda qkv, m: _packed(qkv, m, scale, bool(causal))  # noqa: E731
    return mesh_lib.shard_attention(local, (qkv_BTH3K,), (mask_B1TT,))


kernels.register("attention", kernels.Implementation(
    attention, unsupported, lambda: unavailable()))
kernels.register("attention_packed", kernels.Implementation(attention_packed, unsupported,
                                                            lambda: unavailable()))
