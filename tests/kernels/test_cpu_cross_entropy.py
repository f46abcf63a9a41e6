"""fmjax's cross-entropy kernel for XLA:CPU (fmjax/kernels/cpu/cross_entropy.cc) against XLA's path."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax import kernels
from fmjax.kernels.cpu import cross_entropy as cpu_cross_entropy, ffi as cpu_ffi
from fmjax import objectives

pytestmark = pytest.mark.skipif(cpu_ffi.compiler() is None, reason="no C++ compiler")


# classes past whole vectors (% 16) and padded columns (classes < V); rows past a task (% 8)
@pytest.mark.parametrize("b,c,v,classes", [(2, 3, 5, 5), (3, 7, 80, 71), (8, 64, 8192, 8192)])
def test_kernel_matches_xla(b, c, v, classes):
    assert cpu_cross_entropy.unavailable() is None
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.standard_normal((b, c, v)) * 4, jnp.float32)
    targets = jnp.asarray(rng.integers(0, classes, (b, c)), jnp.int32)
    targets = targets.at[0, 0].set(0).at[-1, -1].set(classes - 1)  # both ends
    weights = jnp.asarray(rng.integers(0, 3, (b, c)), jnp.float32)  # 0 included
    assert kernels.why_not("cross_entropy", logits) is None
    kernel = jax.jit(lambda l, t, w: cpu_cross_entropy.ce_and_grad(l, t, w, classes))
    assert "fmjax_cpu_cross_entropy" in kernel.lower(logits, targets, weights).as_text()
    ce, dlogits = kernel(logits, targets, weights)
    want_ce, want_d = objectives._ce_and_grad_xla(logits, targets, weights, classes)
    np.testing.assert_allclose(ce, want_ce, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dlogits, want_d, rtol=1e-5, atol=1e-6)
    assert not np.any(np.asarray(dlogits)[..., classes:])  # padded columns: no gradient
    # and against the textbook formula in float64
    l64 = np.asarray(logits, np.float64)[..., :classes]
    lse = np.log(np.exp(l64 - l64.max(-1, keepdims=True)).sum(-1)) + l64.max(-1)
    target_logit = np.take_along_axis(l64, np.asarray(targets)[..., None], -1)[..., 0]
    np.testing.assert_allclose(ce, (lse - target_logit) * np.asarray(weights), rtol=1e-5,
                               atol=1e-5)
