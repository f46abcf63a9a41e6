"""The experts' grouped matmul through megablox (fmjax/kernels/tpu/megablox.py), run here in
Pallas interpret mode: values and gradients equal jax.lax.ragged_dot's (rows past the groups 0,
an empty group, a row count that is not a multiple of the tile), and a mixture-of-experts
model trains the same on an expert mesh inside the dispatch's shard_map; `auto` off TPU is
ragged_dot. Compiled for TPU it is Mosaic's gmm / tgmm (tests/aot/test_preflight.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.nn import moe
from tests.test_sharding import losses_on_mesh, moe_config


@pytest.mark.parametrize("rows,group_sizes", [(37, [5, 0, 17, 9]), (40, [10, 10, 10, 10])])
def test_values_and_gradients_equal_ragged_dot(rows, group_sizes):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((rows, 24)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((4, 24, 20)), jnp.float32)
    sizes = jnp.asarray(group_sizes, jnp.int32)
    dy = jnp.asarray(rng.standard_normal((rows, 20)), jnp.float32)

    def value_and_grads(impl):
        y, vjp = jax.vjp(lambda x, w: moe.grouped_matmul(x, w, sizes, impl), x, w)
        return (y, *vjp(dy))

    want, got = value_and_grads("ragged_dot"), value_and_grads("megablox")
    for name, a, b in zip(("y", "dx", "dw"), want, got):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=name)
    past = sum(group_sizes)
    assert not np.any(np.asarray(got[0])[past:]) and not np.any(np.asarray(got[1])[past:])


def test_auto_is_ragged_dot_off_tpu():
    x, w, sizes = jnp.ones((8, 4)), jnp.ones((2, 4, 4)), jnp.asarray([3, 5], jnp.int32)
    jaxpr = str(jax.make_jaxpr(lambda x: moe.grouped_matmul(x, w, sizes, "auto"))(x))
    assert "ragged_dot" in jaxpr and "pallas_call" not in jaxpr


def test_moe_trains_the_same_with_megablox_on_an_expert_mesh():
    """Losses and gradient norms: megablox on (data 2, expert 4) = ragged_dot on one device."""
    reference, _ = losses_on_mesh(moe_config(grouped_matmul="ragged_dot"), (1, 1, 1, 1), steps=2)
    losses, _ = losses_on_mesh(moe_config(grouped_matmul="megablox"), (2, 1, 4, 1), steps=2)
    np.testing.assert_allclose(losses, reference, rtol=1e-5)
