"""fmjax's dense GEMMs for XLA:CPU (dense.cc), float32: the forward product and the weight
gradient of y = x w (+ b), registered as operations `dense_affine`, `dense_weight_grads` and
`dense_add_weight_grad` of fmjax/kernels/ (their XLA versions are in fmjax/nn/layers.py).

affine: y = x w (+ b) for x [N, I], w [I, O]. Tasks of up to 384 rows x 256 columns of y;
each tile's first row panel copies its slice of w (rows O * 4 bytes apart) into L1 as it
reads it and the others read the copy; the next slice of w, the next panel's rows of x and
y's cold rows are fetched while the products run; the bias is added to the sums in
registers.

weight_grads: the backward pass needs dw = x^T g, a product over the token axis, the major
axis of both row-major operands. XLA:CPU's GEMM library takes only [M, K] @ [K, N] (or
[N, K]^T) operands, so XLA copies a transpose first and then multiplies with an [I, N] @
[N, O] shape its kernels run below their peak. The kernel reads x^T in place, copies g's
far-apart rows into L1 as it first reads them, fetches the next slices of g and x into L2
while it works on the current ones, and sums db = g's columns in the same call.
add_weight_grad accumulates dw += x^T g in place (the output layer's table gradient).

They run for float32 on one device (no mesh, or a mesh of one device) when they build
(ffi.py). tests/kernels/test_cpu_dense.py checks them against XLA and float64.
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp

from fmjax import kernels
from fmjax.kernels.cpu import ffi as cpu_ffi

SOURCE = pathlib.Path(__file__).with_name("dense.cc")
_TARGETS = {"fmjax_cpu_dense_dw": "FmjaxDenseWeightGrad",
            "fmjax_cpu_dense_dw_db": "FmjaxDenseWeightBiasGrad",
            "fmjax_cpu_dense_add_dw": "FmjaxDenseAddWeightGrad",
            "fmjax_cpu_dense_affine": "FmjaxDenseAffine",
            "fmjax_cpu_dense_linear": "FmjaxDenseLinear"}

unavailable = cpu_ffi.loader(SOURCE, _TARGETS)  # None once built and registered, else why not


def unsupported(x_NI, b_NO, *_, **__) -> str | None:
    """Why the kernels do not take x [N, I] and a second operand [., O] (weight_grads' g,
    affine's w), else None: they need a CPU backend, float32 2-D operands, whole vectors of
    output features and no mesh of more than one device (they are not partitioned)."""
    if not (x_NI.ndim == b_NO.ndim == 2 and x_NI.dtype == b_NO.dtype == jnp.float32):
        return "the kernels take float32 2-D operands"
    if b_NO.shape[1] % cpu_ffi.MULTIPLE:
        return f"output features must be a multiple of {cpu_ffi.MULTIPLE}"
    if not cpu_ffi.single_cpu_device():
        return "not a single CPU device"
    return None


def weight_grads(x_NI, g_NO, with_bias: bool):
    """(dw = x^T g [I, O], db = sum_n g [O] or None) in float32 for x [N, I], g [N, O]."""
    dw_IO = jax.ShapeDtypeStruct((x_NI.shape[1], g_NO.shape[1]), jnp.float32)
    if not with_bias:
        call = jax.ffi.ffi_call("fmjax_cpu_dense_dw", dw_IO, vmap_method="sequential")
        return call(x_NI, g_NO), None
    db_O = jax.ShapeDtypeStruct((g_NO.shape[1],), jnp.float32)
    call = jax.ffi.ffi_call("fmjax_cpu_dense_dw_db", (dw_IO, db_O), vmap_method="sequential")
    return tuple(call(x_NI, g_NO))


def add_weight_grad(x_NI, g_NO, dw_IO):
    """dw + x^T g for a float32 dw [I, O], accumulating over chunks of N (the output layer's
    table gradient). The kernel adds into dw's buffer, which XLA reuses when nothing else
    reads dw afterwards (a scan's carry): no separate pass of the sum over dw."""
    call = jax.ffi.ffi_call("fmjax_cpu_dense_add_dw", jax.ShapeDtypeStruct(dw_IO.shape,
                            jnp.float32), input_output_aliases={2: 0}, vmap_method="sequential")
    return call(x_NI, g_NO, dw_IO.astype(jnp.float32))


def affine(x_NI, w_IO, b_O, preferred_element_type=None):
    """x w (+ b unless None) for x [N, I], w [I, O], in float32 (the kernel's only type)."""
    y_NO = jax.ShapeDtypeStruct((x_NI.shape[0], w_IO.shape[1]), jnp.float32)
    if b_O is None:
        call = jax.ffi.ffi_call("fmjax_cpu_dense_linear", y_NO, vmap_method="sequential")
        return call(x_NI, w_IO)
    call = jax.ffi.ffi_call("fmjax_cpu_dense_affine", y_NO, vmap_method="sequential")
    return call(x_NI, w_IO, b_O)


for _op, _run in (("dense_affine", affine), ("dense_weight_grads", weight_grads),
                  ("dense_add_weight_grad", add_weight_grad)):
    kernels.register(_op, kernels.Implementation(_run, unsupported, lambda: unavailable()))
