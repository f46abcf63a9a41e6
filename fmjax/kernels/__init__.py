"""The one seam between fmjax's core and its optional kernels.

Core code (fmjax/nn, fmjax/objectives, fmjax/training) calls an *operation* with its own XLA
version; a kernel registers here as an implementation of that operation, and this module
chooses. Nothing outside fmjax/kernels/ imports a kernel module.

Operations and their arguments (the XLA version in the core has the same signature):
  dense_affine(x_NI, w_IO, b_O | None, preferred_element_type=None) -> y_NO    nn/layers.py
  dense_weight_grads(x_NI, g_NO, with_bias) -> (dw_IO, db_O | None)           nn/layers.py
  dense_add_weight_grad(x_NI, g_NO, dw_IO) -> dw_IO + x^T g                   nn/layers.py
  layer_norm_forward(x_ND, scale_D, bias_D, eps) -> (y_ND, mean_N1, rstd_N1)  nn/layers.py
  layer_norm_backward(x_ND, scale_D, mean_N1, rstd_N1, dy_ND) -> (dx, dscale, dbias)
  cross_entropy(logits_NV, targets_N, weights_N, num_classes) -> (ce_N, dlogits_NV)
                                                                               objectives/
  adamw(grad_sums, tokens, grad_norm, opt_state, params, finite, *, optim, schedule,
        decay_mask) -> (params, opt_state)                             training/optimizer.py
  attention(q_BTHK, k_BSHK, v_BSHK, mask_B1TS, *, scale, causal) -> out_BTHK  nn/attention.py
  attention_packed(qkv_BTH3K, mask_B1TT, *, scale, causal) -> out_BTHK        nn/attention.py
  splash_attention(q_BTHK, k_BSHK, v_BSHK, segment_ids_BT, *, causal, scale)  nn/attention.py
  grouped_matmul(x_RD, w_EDF, group_sizes_E) -> y_RF (jax.lax.ragged_dot)     nn/moe.py
The first four kinds are chosen per call by `call` (the kernel where it takes the operands and
runs on the platform being lowered for, else XLA); attention implementations are chosen by
`model.attention_impl` (nn/attention.py asks `unsupported` / `unavailable` and then `run`).

Backends: every subpackage here (kernels/cpu/, kernels/tpu/) is imported on first use and
registers what it has. A new kernel is a module in one of them plus a `register` call.
`FMJAX_CPU_KERNELS=0` in the environment turns every CPU kernel off (kernels/cpu/ffi.py); with
no C++ compiler they report why they are unavailable, and every operation takes XLA's path.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import pkgutil
from typing import Callable

import jax


@dataclasses.dataclass(frozen=True)
class Implementation:
    run: Callable  # same operands as the operation's XLA version
    unsupported: Callable[..., str | None] = lambda *args, **kwargs: None  # why not these operands
    unavailable: Callable[[], str | None] = lambda: None  # why not on this host (build, switch)
    platform: str = "cpu"  # the backend it runs on (a jax.lax.platform_dependent key)
    unsupported_length: Callable[[int], str | None] = lambda length: None  # rows it cannot tile


_REGISTRY: dict[str, Implementation] = {}
_XLA_ONLY = [0]  # > 0 inside xla_only(): every operation takes its XLA version


@contextlib.contextmanager
def xla_only():
    """Within: `get` finds no kernel and `call` takes XLA's path, so what is traced holds no
    kernel's custom call: a program exported to run without fmjax (jax.export) or on another
    host. Affects tracing only; programs jitted before keep what they were traced with."""
    _XLA_ONLY[0] += 1
    try:
        yield
    finally:
        _XLA_ONLY[0] -= 1


def register(op: str, implementation: Implementation) -> None:
    _REGISTRY[op] = implementation


@functools.cache
def _load_backends() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def get(op: str) -> Implementation | None:
    """The registered implementation of `op`, or None (always None inside xla_only())."""
    if _XLA_ONLY[0]:
        return None
    _load_backends()
    return _REGISTRY.get(op)


def why_not(op: str, *args, **kwargs) -> str | None:
    """None if a kernel runs `op` on these operands, else why not (the operands, then the host)."""
    impl = get(op)
    if impl is None:
        return f"no kernel implements {op}"
    return impl.unsupported(*args, **kwargs) or impl.unavailable()


def unavailable(op: str) -> str | None:
    impl = get(op)
    return f"no kernel implements {op}" if impl is None else impl.unavailable()


def run(op: str, *args, **kwargs):
    """The kernel of `op` on these operands, unconditionally (check `why_not` first)."""
    impl = get(op)
    if impl is None:
        raise RuntimeError(f"fmjax: no kernel implements {op}")
    return impl.run(*args, **kwargs)


def call(op: str, xla: Callable, *args, **static):
    """op(*args): the registered kernel where it takes these operands, else `xla(*args)`.
    The choice is made again when lowering: a program lowered for another platform than the
    kernel's (fmjax.aot) gets XLA's path. `static` keywords go to both versions."""
    impl = get(op)
    if impl is None or impl.unsupported(*args, **static) or impl.unavailable():
        return xla(*args, **static)
    return jax.lax.platform_dependent(
        *args, **{impl.platform: functools.partial(impl.run, **static)},
        default=functools.partial(xla, **static))
