"""fmjax's LayerNorm kernel for XLA:CPU (fmjax/kernels/cpu/layer_norm.cc) against XLA's path."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax import kernels
from fmjax.kernels.cpu import ffi as cpu_ffi, layer_norm as cpu_layer_norm
from fmjax.nn import layers

pytestmark = pytest.mark.skipif(cpu_ffi.compiler() is None, reason="no C++ compiler")

EPS = 1e-5


def _operands(shape, seed=0):
    rng = np.random.default_rng(seed)
    d = shape[-1]
    x = jnp.asarray(rng.standard_normal(shape) * 3 + 1, jnp.float32)  # mean and scale off 0, 1
    scale, bias = (jnp.asarray(rng.standard_normal(d), jnp.float32) for _ in range(2))
    dy = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    return x, scale, bias, dy


def _xla(x, scale, bias):
    return layers._layer_norm_stats_xla(x, scale, bias, EPS)[0]  # autodiff's gradients


# rows past a task (% 64), widths past whole vectors (% 16), bench_small's [8, 256, 384]
@pytest.mark.parametrize("shape", [(3, 5), (201, 50), (2, 67, 384), (8, 256, 384)])
def test_kernel_matches_xla(shape):
    assert cpu_layer_norm.unavailable() is None
    x, scale, bias, dy = _operands(shape)
    assert kernels.why_not("layer_norm_forward", x) is None
    kernel = lambda x, s, b: layers.layer_norm(x, s, b, EPS)
    grads = jax.jit(lambda x, s, b, dy: jax.vjp(kernel, x, s, b)[1](dy))
    assert "fmjax_cpu_layer_norm_bwd" in grads.lower(x, scale, bias, dy).as_text()
    assert "fmjax_cpu_layer_norm_fwd" in jax.jit(kernel).lower(x, scale, bias).as_text()
    np.testing.assert_allclose(jax.jit(kernel)(x, scale, bias), _xla(x, scale, bias),
                               rtol=1e-5, atol=1e-5)
    want = jax.vjp(_xla, x, scale, bias)[1](dy)
    for got, ref in zip(grads(x, scale, bias, dy), want):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # the column sums do not depend on which thread ran which block of rows
    again = grads(x, scale, bias, dy)
    for a, b in zip(grads(x, scale, bias, dy), again):
        np.testing.assert_array_equal(a, b)
