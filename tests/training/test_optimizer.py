"""Optimizer factory: schedules' shapes, the weight-decay mask, Adafactor state sharding."""
import jax
import optax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.training import optimizer as optim
from fmjax.config import base_config


def schedule(name, steps=100, **kw):
    c = base_config()
    c.optim.schedule = name
    c.optim.learning_rate, c.optim.warmup_steps, c.optim.min_lr_ratio = 1.0, 10, 0.1
    for k, v in kw.items():
        c.optim[k] = v
    return optim.make_schedule(c.optim, steps)


def test_warmup_then_cosine():
    s = schedule("cosine")
    assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.5)
    assert float(s(10)) == pytest.approx(1.0)
    assert float(s(55)) == pytest.approx(0.55, abs=1e-3)  # halfway down to 0.1
    assert float(s(100)) == pytest.approx(0.1)


def test_linear_rsqrt_wsd_constant():
    assert float(schedule("linear")(55)) == pytest.approx(0.55)
    rsqrt = schedule("rsqrt")
    assert float(rsqrt(10)) == pytest.approx(1.0) and float(rsqrt(40)) == pytest.approx(0.5)
    wsd = schedule("wsd", wsd_decay_fraction=0.2)
    assert float(wsd(50)) == pytest.approx(1.0) and float(wsd(81)) == pytest.approx(1.0)
    assert float(wsd(100)) == pytest.approx(0.1)
    assert float(schedule("constant")(90)) == 1.0


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="config.optim.schedule = 'cosin'"):
        schedule("cosin")


def test_weight_decay_mask_excludes_norms_biases_embeddings():
    params = {"embed": {"embedding": 1}, "ln": {"scale": 1, "bias": 1},
              "mlp": {"kernel": 1, "bias": 1}}
    c = base_config()
    mask = optim.decay_mask(c.optim)(params)
    assert mask == {"embed": {"embedding": False}, "ln": {"scale": False, "bias": False},
                    "mlp": {"kernel": True, "bias": False}}
    c.optim.decay_embeddings = True
    assert optim.decay_mask(c.optim)(params)["embed"]["embedding"] is True


def test_adamw_decays_only_masked_weights():
    c = base_config()
    c.optim.learning_rate, c.optim.warmup_steps, c.optim.schedule = 0.1, 0, "constant"
    c.optim.weight_decay, c.optim.clip_norm = 0.5, 0.0
    tx = optim.make_optax_chain(c.optim, optim.make_schedule(c.optim, c.train.steps))
    params = {"w": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}}
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["w"]["kernel"], -0.1 * 0.5 * np.ones(2))
    np.testing.assert_allclose(updates["w"]["bias"], 0.0)


def test_adafactor_trains_a_quadratic():
    c = base_config()
    c.optim.name, c.optim.learning_rate, c.optim.warmup_steps = "adafactor", 0.1, 0
    c.optim.schedule, c.optim.weight_decay = "constant", 0.0
    tx, _ = optim.make_optimizer(c.optim, c.train.steps)
    params = {"w": jnp.full((4, 3), 2.0)}
    state = tx.init(params)
    for _ in range(50):
        grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
        norm = optax.global_norm(grads)
        updates, state = tx.update(grads, state, params, tokens=1.0, grad_norm=norm,
                                   finite=True)
        params = optim.apply_updates(params, updates)
    assert float(jnp.abs(params["w"]).max()) < 0.5
