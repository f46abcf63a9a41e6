"""The AdamW kernel (fmjax/kernels/cpu/adamw.cc) against optax's chain on the same optimizer state."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fmjax import config as config_lib
from fmjax.kernels.cpu import adamw as cpu_adamw
from fmjax.training import optimizer as optim

pytestmark = pytest.mark.skipif(cpu_adamw.unavailable() is not None,
                                reason=f"kernel unavailable: {cpu_adamw.unavailable()}")


def _params(rng):
    # odd sizes: a partial vector at the end, and several tasks for the matrix
    shapes = {"dense": {"kernel": (300, 131), "bias": (131,)}, "norm": {"scale": (37,)},
              "embed": {"embedding": (1000, 48)}}
    return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s), jnp.float32), shapes,
                        is_leaf=lambda s: isinstance(s, tuple))


def _config(clip_norm):
    c = config_lib.base_config()
    c.optim.clip_norm = clip_norm
    c.optim.warmup_steps = 2
    c.optim.weight_decay = 0.1
    c.optim.decay_biases = True  # one decayed and two undecayed kinds of leaf
    return c


def _fused(config):
    """(jitted update through the optimizer factory's transformation, the optax chain it
    stands for, the grad_sums -> kernel target check)."""
    tx, schedule = optim.make_optimizer(config.optim, config.train.steps,
                                        skip_nonfinite=True)

    def update(grad_sums, tokens, grad_norm, opt_state, params, finite):
        updates, state = tx.update(grad_sums, opt_state, params, tokens=tokens,
                                   grad_norm=grad_norm, finite=finite)
        return optim.apply_updates(params, updates), state

    return jax.jit(update), optim.make_optax_chain(config.optim, schedule)


def _run(update, params, opt_state, grad_sums, tokens, finite):
    grad_norm = optax.global_norm(grad_sums) / tokens
    return update(grad_sums, tokens, grad_norm, opt_state, params, finite)


@pytest.mark.parametrize("clip_norm", [0.0, 1.0, 1e3])
def test_kernel_steps_equal_optax(clip_norm):
    """Five steps of the kernel and of optax.chain(clip_by_global_norm, adamw) from the same
    state agree to float32 rounding; the state keeps optax's layout (counts included)."""
    config = _config(clip_norm)
    kernel, tx = _fused(config)
    reference = jax.jit(lambda g, t, p, s: (lambda u, s: (optax.apply_updates(p, u), s))(
        *tx.update(jax.tree.map(lambda x: x / t, g), s, p)))
    rng = np.random.default_rng(0)
    params = _params(rng)
    state_k = state_r = tx.init(params)
    params_k = params_r = params
    for step in range(5):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape) * 40, jnp.float32),
                             params)
        tokens = jnp.float32(37 + step)
        if step == 0:  # the factory's transformation runs the kernel here
            assert "fmjax_cpu_adamw" in kernel.lower(
                grads, tokens, jnp.float32(1), state_k, params_k, True).as_text()
        params_k, state_k = _run(kernel, params_k, state_k, grads, tokens, True)
        params_r, state_r = reference(grads, tokens, params_r, state_r)
    assert jax.tree.structure(state_k) == jax.tree.structure(state_r)
    for a, b in zip(jax.tree.leaves((params_k, state_k)), jax.tree.leaves((params_r, state_r))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=1e-7)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), params_k, params)
    assert min(jax.tree.leaves(moved)) > 1e-4  # every leaf trained, so the check means something


def test_a_skipped_step_writes_nothing():
    """finite=False (train.on_nonfinite=skip after a NaN) leaves params, moments and counts as
    they were, bitwise."""
    config = _config(1.0)
    update, tx = _fused(config)
    rng = np.random.default_rng(1)
    params = _params(rng)
    grads = jax.tree.map(lambda p: jnp.ones_like(p), params)
    params, state = _run(update, params, tx.init(params), grads, jnp.float32(3), jnp.bool_(True))
    grads = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
    after, state_after = _run(update, params, state, grads, jnp.float32(3), jnp.bool_(False))
    for a, b in zip(jax.tree.leaves((after, state_after)), jax.tree.leaves((params, state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
