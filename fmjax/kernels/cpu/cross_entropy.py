"""fmjax's softmax cross-entropy for XLA:CPU (fmjax/kernels/cpu/cross_entropy.cc), float32.

For one chunk of the output layer (objectives.output_cross_entropy): each row's weighted
loss, and the gradient with respect to the logits written over the logits' own buffer. XLA:CPU
runs the max, the exponentials and sum, and the gradient as separate passes over a chunk
(64 MB for bench_small's 2,048 positions x 8K classes, far beyond L2); the kernel reads each
row once and keeps it in L1 (32 KB for 8K classes) for all three. objectives._ce_chunk takes
it on CPU for float32 logits on one device when it builds (fmjax/kernels/cpu/ffi.py); anywhere else
XLA's path. tests/test_cpu_cross_entropy.py checks it against that path.
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from fmjax import kernels
from fmjax.kernels.cpu import ffi as cpu_ffi

SOURCE = pathlib.Path(__file__).with_name("cross_entropy.cc")
_TARGETS = {"fmjax_cpu_cross_entropy": "FmjaxCrossEntropy"}

unavailable = cpu_ffi.loader(SOURCE, _TARGETS)  # None once built and registered, else why not


def unsupported(logits_NV, *_, **__) -> str | None:
    """Why the kernel does not take these logits, else None: it needs float32 on one CPU
    device."""
    if logits_NV.dtype != jnp.float32:
        return "the kernel takes float32 logits"
    return None if cpu_ffi.single_cpu_device() else "not a single CPU device"


def ce_and_grad(logits_NV, targets_N, weights_N, num_classes: int):
    """(weighted CE per row [N...], its gradient [N..., V]) over the first num_classes columns
    of logits (the rest get gradient 0); the gradient reuses the logits' buffer."""
    call = jax.ffi.ffi_call("fmjax_cpu_cross_entropy",
                            cpu_ffi.f32(targets_N.shape, logits_NV.shape),
                            input_output_aliases={0: 1}, vmap_method="sequential")
    return tuple(call(logits_NV, targets_N.astype(jnp.int32), weights_N.astype(jnp.float32),
                      classes=np.int64(num_classes)))


kernels.register("cross_entropy", kernels.Implementation(
    ce_and_grad, unsupported, lambda: unavailable()))
