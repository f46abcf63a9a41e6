"""fmjax's dense GEMMs for XLA:CPU (fmjax/cpu_dense.cc), float32: the forward product and the
weight gradient of y = x w (+ b).

affine: y = x w (+ b) for x [N, I], w [I, O]. Tasks of up to 384 rows x 256 columns of y;
each tile's first row panel copies its slice of w (rows O * 4 bytes apart) into L1 as it
reads it and the others read the copy; the next slice of w, the next panel's rows of x and
y's cold rows are fetched while the products run; the bias is added to the sums in
registers. On bench_small's shapes, with cold operands, it runs at 281-300 GFLOP/s where
XLA's GEMM and bias add run at 245-279 (2-core Intel Xeon); the step is 2.1% faster than
with XLA's path, and 1.1% more with the fetch of y's rows (in one process).

weight_grads: the backward pass needs dw = x^T g, a product over the token axis, the major
axis of both row-major operands. XLA:CPU's GEMM library takes only [M, K] @ [K, N] (or
[N, K]^T) operands, so XLA copies a transpose first and then multiplies with an [I, N] @
[N, O] shape its kernels run below their peak. The kernel reads x^T in place, copies g's
far-apart rows into L1 as it first reads them, fetches the next slices of g and x into L2
while it works on the current ones, and sums db = g's columns in the same call (the step
2.2% faster than with XLA's path, 747 vs 764 ms in one process). add_weight_grad
accumulates dw += x^T g in place (the output layer's table gradient).

layers.matmul and the output layer take them on CPU for float32 on one device (no mesh, or
a mesh of one device) when they build (fmjax/cpu_ffi.py); anywhere else XLA's path.
tests/test_cpu_dense.py checks them against XLA and float64.
"""
from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp

from fmjax import cpu_ffi

SOURCE = pathlib.Path(__file__).with_name("cpu_dense.cc")
_TARGETS = {"fmjax_cpu_dense_dw": "FmjaxDenseWeightGrad",
            "fmjax_cpu_dense_dw_db": "FmjaxDenseWeightBiasGrad",
            "fmjax_cpu_dense_add_dw": "FmjaxDenseAddWeightGrad",
            "fmjax_cpu_dense_affine": "FmjaxDenseAffine",
            "fmjax_cpu_dense_linear": "FmjaxDenseLinear"}

unavailable = cpu_ffi.loader(SOURCE, _TARGETS)  # None once built and registered, else why not


def applies(x_NI, b_NO) -> bool:
    """Whether the kernels run for x [N, I] and a second operand [., O] (weight_grads' g,
    affine's w; else XLA's path): a CPU backend, float32 2-D operands, whole vectors of output
    features, no mesh of more than one device (the kernels are not partitioned), and kernels
    that build."""
    return (x_NI.ndim == b_NO.ndim == 2 and x_NI.dtype == b_NO.dtype == jnp.float32
            and b_NO.shape[1] % cpu_ffi.MULTIPLE == 0 and cpu_ffi.single_cpu_device()
            and unavailable() is None)


def _xla(x_NI, g_NO, with_bias: bool):
    dw_IO = jnp.matmul(jnp.transpose(x_NI), g_NO, preferred_element_type=jnp.float32)
    return dw_IO, (jnp.sum(g_NO, axis=0, dtype=jnp.float32) if with_bias else None)


def _kernel(x_NI, g_NO, with_bias: bool):
    dw_IO = jax.ShapeDtypeStruct((x_NI.shape[1], g_NO.shape[1]), jnp.float32)
    if not with_bias:
        call = jax.ffi.ffi_call("fmjax_cpu_dense_dw", dw_IO, vmap_method="sequential")
        return call(x_NI, g_NO), None
    db_O = jax.ShapeDtypeStruct((g_NO.shape[1],), jnp.float32)
    call = jax.ffi.ffi_call("fmjax_cpu_dense_dw_db", (dw_IO, db_O), vmap_method="sequential")
    return tuple(call(x_NI, g_NO))


def weight_grads(x_NI, g_NO, with_bias: bool):
    """(dw = x^T g [I, O], db = sum_n g [O] or None) in float32 for x [N, I], g [N, O]: the
    kernel where `applies`, else XLA."""
    return cpu_ffi.kernel_or_xla(applies(x_NI, g_NO),
                                 functools.partial(_kernel, with_bias=with_bias),
                                 functools.partial(_xla, with_bias=with_bias), x_NI, g_NO)


def _add_xla(x_NI, g_NO, dw_IO):
    return dw_IO + _xla(x_NI, g_NO, False)[0]


def _add_kernel(x_NI, g_NO, dw_IO):
    call = jax.ffi.ffi_call("fmjax_cpu_dense_add_dw", jax.ShapeDtypeStruct(dw_IO.shape,
                            jnp.float32), input_output_aliases={2: 0}, vmap_method="sequential")
    return call(x_NI, g_NO, dw_IO)


def add_weight_grad(dw_IO, x_NI, g_NO):
    """dw + x^T g for a float32 dw [I, O], accumulating over chunks of N (the output layer's
    table gradient). The kernel adds into dw's buffer, which XLA reuses when nothing else
    reads dw afterwards (a scan's carry): no separate pass of the sum over dw."""
    return cpu_ffi.kernel_or_xla(applies(x_NI, g_NO), _add_kernel, _add_xla, x_NI, g_NO,
                                 dw_IO.astype(jnp.float32))


def _affine_xla(x_NI, w_IO, b_O, preferred_element_type=None):
    y_NO = jnp.matmul(x_NI, w_IO, preferred_element_type=preferred_element_type)
    return y_NO if b_O is None else y_NO + b_O


def _affine_kernel(x_NI, w_IO, b_O):
    y_NO = jax.ShapeDtypeStruct((x_NI.shape[0], w_IO.shape[1]), jnp.float32)
    if b_O is None:
        call = jax.ffi.ffi_call("fmjax_cpu_dense_linear", y_NO, vmap_method="sequential")
        return call(x_NI, w_IO)
    call = jax.ffi.ffi_call("fmjax_cpu_dense_affine", y_NO, vmap_method="sequential")
    return call(x_NI, w_IO, b_O)


def affine(x_NI, w_IO, b_O, preferred_element_type=None):
    """x w (+ b unless None) for x [N, I], w [I, O]: the kernel where `applies`, else XLA (its
    product in preferred_element_type, as jnp.matmul)."""
    xla = functools.partial(_affine_xla, preferred_element_type=preferred_element_type)
    return cpu_ffi.kernel_or_xla(applies(x_NI, w_IO), _affine_kernel, xla, x_NI, w_IO, b_O)
