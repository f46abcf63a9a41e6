"""fmjax's dense GEMM kernels for XLA:CPU (fmjax/kernels/cpu/dense.cc) against XLA's path and float64."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax import kernels
from fmjax.kernels.cpu import dense as cpu_dense, ffi as cpu_ffi
from fmjax.nn import layers
from fmjax import mesh as mesh_lib

pytestmark = pytest.mark.skipif(cpu_ffi.compiler() is None, reason="no C++ compiler")


def _operands(n, i, o, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal((n, i)), jnp.float32),
            jnp.asarray(rng.standard_normal((n, o)), jnp.float32))


# rows past whole tiles and tasks (i % 6, i % 384), steps past a pass (n % 128), columns past
# whole tasks and tiles (o % 128, o % 64), a wide g (the output layer's), x copied per task
# (i >= 1024)
@pytest.mark.parametrize("n,i,o", [(8, 4, 16), (600, 53, 80), (1100, 100, 208), (64, 384, 1152),
                                   (300, 389, 1040), (520, 13, 4112), (200, 1030, 48)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_kernel_matches_xla(n, i, o, with_bias):
    assert cpu_dense.unavailable() is None
    x, g = _operands(n, i, o)
    assert (kernels.why_not("dense_affine", x, g) is None)
    got = jax.jit(lambda x, g: layers.weight_grads(x, g, with_bias))(x, g)
    lowered = jax.jit(lambda x, g: layers.weight_grads(x, g, with_bias)).lower(x, g)
    assert ("fmjax_cpu_dense_dw_db" if with_bias else "fmjax_cpu_dense_dw") in lowered.as_text()
    want_dw = np.asarray(x, np.float64).T @ np.asarray(g, np.float64)
    np.testing.assert_allclose(got[0], want_dw, rtol=1e-5, atol=1e-4 * np.sqrt(n))
    if with_bias:
        np.testing.assert_allclose(got[1], np.asarray(g, np.float64).sum(0), rtol=1e-5,
                                   atol=1e-4 * np.sqrt(n))
    else:
        assert got[1] is None
    dw = jnp.asarray(np.random.default_rng(3).standard_normal((i, o)), jnp.float32)
    add = jax.jit(layers.add_weight_grad)
    assert "fmjax_cpu_dense_add_dw" in add.lower(dw, x, g).as_text()
    np.testing.assert_allclose(add(dw, x, g), np.asarray(dw) + want_dw, rtol=1e-5,
                               atol=1e-4 * np.sqrt(n))


# rows past whole panels and tasks (n % 6, n % 384), steps past a pass (i % 128), columns past
# whole tiles and tasks (o % 64, o % 256), tasks halved for few rows, x's rows 4 KB apart or
# more (i >= 1024; their prefetch), bench_small's MLP shape
@pytest.mark.parametrize("n,i,o", [(8, 4, 16), (600, 53, 80), (1100, 300, 208), (7, 129, 400),
                                   (389, 1030, 48), (64, 384, 1152), (2048, 384, 1536)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_forward_kernel_matches_float64(n, i, o, with_bias):
    rng = np.random.default_rng(4)
    x, w = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for shape in ((n, i), (i, o)))
    b = jnp.linspace(-2, 2, o, dtype=jnp.float32) if with_bias else None
    assert (kernels.why_not("dense_affine", x, w) is None)
    affine = jax.jit(layers.affine)
    assert ("fmjax_cpu_dense_affine" if with_bias else "fmjax_cpu_dense_linear") in (
        affine.lower(x, w, b).as_text())
    want = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    if with_bias:
        want += np.asarray(b, np.float64)
    np.testing.assert_allclose(affine(x, w, b), want, rtol=1e-5, atol=1e-4 * np.sqrt(i))
    np.testing.assert_allclose(affine(x, w, b), layers._affine_xla(x, w, b), rtol=1e-5,
                               atol=1e-4 * np.sqrt(i))


def test_dense_gradients_equal_autodiff():
    """layers.matmul's custom backward (kernel on CPU) gives autodiff's gradients of x w + b."""
    x, g = _operands(96, 40, 48, seed=1)
    w = jnp.asarray(np.random.default_rng(2).standard_normal((40, 48)), jnp.float32)
    b = jnp.linspace(-1, 1, 48, dtype=jnp.float32)
    loss = lambda f: lambda x, w, b: jnp.sum(jnp.tanh(f(x, w, b)) * g)  # noqa: E731
    got = jax.jit(jax.grad(loss(layers.matmul), argnums=(0, 1, 2)))(x, w, b)
    want = jax.jit(jax.grad(loss(lambda x, w, b: x @ w + b), argnums=(0, 1, 2)))(x, w, b)
    for a, e in zip(got, want):
        np.testing.assert_allclose(a, e, rtol=2e-5, atol=2e-5)
    no_bias = jax.jit(jax.grad(lambda x, w: jnp.sum(layers.matmul(x, w, None) * g), 1))(x, w)
    np.testing.assert_allclose(no_bias, x.T @ g, rtol=2e-5, atol=2e-5)


def test_where_the_kernel_does_not_apply():
    """XLA's path for bfloat16, output widths that are not whole vectors, meshes of several
    devices (the kernel is not partitioned) and programs lowered for another platform."""
    x, g = _operands(32, 8, 32)
    w = g[:8]
    assert kernels.why_not("dense_affine", x.astype(jnp.bfloat16), g.astype(jnp.bfloat16))
    assert kernels.why_not("dense_affine", x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    assert not (kernels.why_not("dense_affine", x, g[:, :24]) is None)
    assert not (kernels.why_not("dense_affine", x, w[:, :24]) is None)
    mesh = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])
    with mesh_lib.activate(mesh):
        assert not (kernels.why_not("dense_affine", x, g) is None)
        assert not (kernels.why_not("dense_affine", x, w) is None)
    tpu = jax.jit(layers.affine).trace(x, w, g[0]).lower(lowering_platforms=("tpu",)).as_text()
    assert "fmjax_cpu_dense" not in tpu and "dot_general" in tpu
    tpu = jax.jit(lambda x, g: layers.weight_grads(x, g, True)).trace(x, g).lower(
        lowering_platforms=("tpu",)).as_text()
    assert "fmjax_cpu_dense" not in tpu and "dot_general" in tpu
    tpu = jax.jit(layers.add_weight_grad).trace(jnp.zeros((8, 32)), x, g).lower(
        lowering_platforms=("tpu",)).as_text()
    assert "fmjax_cpu_dense" not in tpu and "dot_general" in tpu
