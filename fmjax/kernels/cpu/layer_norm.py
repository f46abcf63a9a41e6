"""fmjax's LayerNorm for XLA:CPU (fmjax/kernels/cpu/layer_norm.cc), float32, forward and backward.

XLA:CPU runs layers.layer_norm as several passes over [N, D] per norm and more for its
backward pass (row reductions, elementwise parts and column sums apart); the kernel makes one
pass per direction, row by row from L1, over XLA's intra-op threads, and saves only mean and
rstd per row (the backward pass recomputes xhat from x). layers.layer_norm takes it on CPU for
float32 on one device when it builds (fmjax/kernels/cpu/ffi.py); anywhere else XLA's path.
tests/test_cpu_layer_norm.py checks it against that path.
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from fmjax import kernels
from fmjax.kernels.cpu import ffi as cpu_ffi

SOURCE = pathlib.Path(__file__).with_name("layer_norm.cc")
_TARGETS = {"fmjax_cpu_layer_norm_fwd": "FmjaxLayerNormForward",
            "fmjax_cpu_layer_norm_bwd": "FmjaxLayerNormBackward"}

unavailable = cpu_ffi.loader(SOURCE, _TARGETS)  # None once built and registered, else why not


def unsupported(x_ND, *_, **__) -> str | None:
    """Why the kernel does not take x, else None: it needs float32 on one CPU device."""
    if x_ND.dtype != jnp.float32:
        return "the kernel takes float32"
    return None if cpu_ffi.single_cpu_device() else "not a single CPU device"


def forward(x_ND, scale_D, bias_D, eps: float):
    """(y, mean, rstd) of LayerNorm over x's last axis; mean and rstd keep it as size 1."""
    stats = x_ND.shape[:-1] + (1,)
    call = jax.ffi.ffi_call("fmjax_cpu_layer_norm_fwd", cpu_ffi.f32(x_ND.shape, stats, stats))
    return tuple(call(x_ND, scale_D, bias_D, eps=np.float32(eps)))


def backward(x_ND, scale_D, mean_N1, rstd_N1, dy_ND):
    """(dx, dscale, dbias) of LayerNorm from forward's mean and rstd and the gradient dy."""
    call = jax.ffi.ffi_call("fmjax_cpu_layer_norm_bwd",
                            cpu_ffi.f32(x_ND.shape, scale_D.shape, scale_D.shape))
    return tuple(call(x_ND, scale_D, mean_N1, rstd_N1, dy_ND))


kernels.register("layer_norm_forward", kernels.Implementation(
    forward, unsupported, lambda: unavailable()))
kernels.register("layer_norm_backward", kernels.Implementation(
    backward, unsupported, lambda: unavailable()))
