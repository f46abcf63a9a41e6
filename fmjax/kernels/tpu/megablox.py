"""The mixture of experts' grouped matmul through Pallas megablox on TPU (operation
`grouped_matmul`, fmjax/nn/moe.py; `model.moe.grouped_matmul` auto or megablox).

grouped_matmul(x_RD, w_EDF, group_sizes_E) -> y_RF: rows [g_0 + ... + g_{e-1}, ... + g_e) of x
times w[e], rows past the last group 0; the contract of jax.lax.ragged_dot, its XLA version.
megablox (jax.experimental.pallas.ops.tpu.megablox) visits only the row tiles that hold a
group's rows and has its own backward (a grouped matmul for dx, a transposed one for dw).
Rows past the groups are left unwritten by the kernel, so they are masked here, in and out
(a select: NaN there never reaches a gradient either). The row count is padded to the row tile.

Tiles (m, k, n): up to TILE rows (a multiple of 8), and k and n whole up to TILE_KN, else
TILE_KN (a multiple of 128, the last tile ragged): Mosaic's block rules; untuned.
Off TPU the kernel runs in Pallas interpret mode, which is slow and meant for tests
(tests/kernels/test_megablox.py); `auto` takes it only when the trace targets TPU, where the
pre-flight compiles it. It has not run on a real TPU yet.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fmjax import kernels
from fmjax.kernels.tpu import trace_platform

TILE = 512  # rows per tile
TILE_KN = 1024  # contraction and output columns per tile
DTYPES = (jnp.float32, jnp.bfloat16)


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def grouped_matmul(x_RD, w_EDF, group_sizes_E):
    from jax.experimental.pallas.ops.tpu.megablox import ops
    r, d = x_RD.shape
    f = w_EDF.shape[-1]
    tm = min(TILE, _round_up(r, 8))
    valid_R1 = (jnp.arange(r) < jnp.sum(group_sizes_E))[:, None]
    x_RD = jnp.where(valid_R1, x_RD, 0)
    x_PD = jnp.pad(x_RD, ((0, _round_up(r, tm) - r), (0, 0)))
    tiling = (tm, d if d <= TILE_KN else TILE_KN, f if f <= TILE_KN else TILE_KN)
    out_dtype = jnp.result_type(x_RD.dtype, w_EDF.dtype)
    y_PF = ops.gmm(x_PD, w_EDF, group_sizes_E.astype(jnp.int32), out_dtype, tiling, None,
                   None, False, not trace_platform.compiling_for_tpu())
    return jnp.where(valid_R1, y_PF[:r], 0)


def _unsupported(x_RD, w_EDF, group_sizes_E) -> str | None:
    for name, a in (("x", x_RD), ("w", w_EDF)):
        if a.dtype not in DTYPES:
            return f"megablox takes float32 or bfloat16 operands, {name} is {a.dtype}"
    return None


def _unavailable() -> str | None:
    if trace_platform.compiling_for_tpu():
        return None
    return "megablox runs on TPU (this trace does not)"


kernels.register("grouped_matmul", kernels.Implementation(
    grouped_matmul, unsupported=_unsupported, unavailable=_unavailable, platform="tpu"))
