"""Activations with hand-written backward passes equal autodiff of their definitions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.nn import layers


@pytest.mark.parametrize("name", ["gelu", "geglu"])
def test_gelu_tanh_gradient_equals_autodiff(name):
    act, _ = layers.MLP_ACTIVATIONS[name]
    x = jnp.linspace(-12.0, 12.0, 4001, dtype=jnp.float32)
    dy = jnp.cos(x)
    reference = lambda x: jax.nn.gelu(x, approximate=True)  # noqa: E731
    np.testing.assert_array_equal(act(x), reference(x))
    got = jax.vjp(act, x)[1](dy)[0]
    want = jax.vjp(reference, x)[1](dy)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # bfloat16 in, bfloat16 gradient out, computed in float32
    xb = x.astype(jnp.bfloat16)
    got_bf16 = jax.vjp(act, xb)[1](dy.astype(jnp.bfloat16))[0]
    assert got_bf16.dtype == jnp.bfloat16
    want_f32 = jax.vjp(reference, xb.astype(jnp.float32))[1](
        dy.astype(jnp.bfloat16).astype(jnp.float32))[0]
    np.testing.assert_allclose(got_bf16.astype(jnp.float32), want_f32, rtol=1e-2, atol=1e-2)
