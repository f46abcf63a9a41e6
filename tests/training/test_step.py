"""Train-step maths: gradient accumulation equals the large batch; z-loss; objective targets."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.training import engine as engine_lib
from fmjax import mesh as mesh_lib, objectives
from tests.helpers import packed_batch, tiny_config


def run(config, steps=3):
    mesh = mesh_lib.make_mesh(config, jax.devices()[:1])
    engine = engine_lib.build(config, mesh)
    state = engine.init_state()
    rows = []
    for step in range(steps):
        batch = {k: jax.device_put(v, engine.batch_sharding)
                 for k, v in packed_batch(seed=step).items()}
        state, m = engine.run_train_step(state, batch)
        rows.append([float(m["loss"]), float(m["grad_norm"])])
    return np.asarray(rows), jax.device_get(state.params)


def test_gradient_accumulation_equals_large_batch():
    big, big_params = run(tiny_config("llama"))
    config = tiny_config("llama")
    config.train.microbatches = 4
    acc, acc_params = run(config)
    np.testing.assert_allclose(acc, big, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(acc_params), jax.tree.leaves(big_params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_causal_lm_targets_stay_inside_documents():
    batch = {k: jnp.asarray(v) for k, v in packed_batch(batch=1, seq=8, split=5).items()}
    obj = objectives.get(tiny_config())
    example = obj.transform(batch, jax.random.PRNGKey(0))
    tokens = np.asarray(batch["tokens"][0])
    np.testing.assert_array_equal(example["weights"][0], [1, 1, 1, 1, 0, 1, 1, 0])
    np.testing.assert_array_equal(np.asarray(example["targets"][0])[:4], tokens[1:5])
    np.testing.assert_array_equal(np.asarray(example["targets"][0])[5:7], tokens[6:8])


def test_padding_gets_no_loss():
    batch = packed_batch(batch=1, seq=8, split=5)
    batch["segment_ids"][0, 6:] = 0  # padding
    obj = objectives.get(tiny_config())
    example = obj.transform({k: jnp.asarray(v) for k, v in batch.items()}, None)
    assert np.asarray(example["weights"][0, 5:]).tolist() == [0, 0, 0]


def test_cross_entropy_and_z_loss():
    logits = jnp.asarray([[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]])
    targets = jnp.asarray([[0, 2]])
    weights = jnp.asarray([[1.0, 1.0]])
    ce, z, w = objectives.cross_entropy(logits, targets, weights, z_loss=1e-2)
    lse = np.log(np.exp([2.0, 0.0, -1.0]).sum()), np.log(3.0)
    np.testing.assert_allclose(ce, (lse[0] - 2.0) + lse[1], rtol=1e-6)
    np.testing.assert_allclose(z, 1e-2 * (lse[0] ** 2 + lse[1] ** 2), rtol=1e-6)
    assert float(w) == 2.0


def test_fused_output_layer_equals_logits_then_cross_entropy(monkeypatch):
    """objectives.output_cross_entropy (chunks of positions, gradients formed in the forward
    pass, the cross-entropy and the table gradient in fmjax's CPU kernels, the first chunk's
    outside the loop) gives the loss and gradients of cross_entropy(x @ table^T) with the
    table's padded rows (past num_classes) never winning."""
    rng = np.random.default_rng(0)
    b, t, d, v, classes = 3, 200, 48, 4112, 4100
    monkeypatch.setattr(objectives, "LOGITS_CHUNK_BYTES", b * 100 * v * 4)
    assert objectives._chunk_len(b, t, v) == 100  # 3 x 200 positions: 2 chunks of 3 x 100
    x = jnp.asarray(rng.standard_normal((b, t, d)), jnp.float32)
    table = jnp.asarray(rng.standard_normal((v, d)) * 0.3, jnp.float32)
    targets = jnp.asarray(rng.integers(0, classes, (b, t)), jnp.int32)
    weights = jnp.asarray(rng.random((b, t)) > 0.2, jnp.float32)

    def plain(x, table):
        logits = jnp.einsum("btd,vd->btv", x, table)
        logits = jnp.where(jnp.arange(v) < classes, logits, -jnp.inf)
        return objectives.cross_entropy(logits, targets, weights)[0]

    def fused(x, table):
        return objectives.output_cross_entropy(x, table, targets, weights, classes)

    want, want_grads = jax.jit(jax.value_and_grad(plain, (0, 1)))(x, table)
    hlo = jax.jit(jax.grad(fused, (0, 1))).lower(x, table).as_text()
    for target in ("fmjax_cpu_cross_entropy", "fmjax_cpu_dense_dw", "fmjax_cpu_dense_add_dw"):
        assert target in hlo
    got, got_grads = jax.jit(jax.value_and_grad(fused, (0, 1)))(x, table)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(fused)(x, table), want, rtol=1e-5)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    assert not np.any(got_grads[1][classes:])


def test_unknown_objective_names_the_field():
    import pytest
    from fmjax.config import ConfigError
    config = tiny_config()
    config.objective = "causal_llm"
    with pytest.raises(ConfigError, match="config.objective = 'causal_llm'.*causal_lm"):
        objectives.get(config)


@pytest.mark.slow
def test_remat_policies_and_scan_do_not_change_the_maths():
    """Every named remat policy, with and without nn.scan over layers, gives the same losses
    and gradient norms as plain backprop (unrolled and scanned params init differently, so
    each is compared with its own no-remat run)."""
    from fmjax.nn.layers import REMAT_POLICIES
    # Every policy under nn.scan (how paper configs run); unrolled blocks take the same
    # nn.remat wrapper, so two policies cover that path.
    for scan, policies in ((True, REMAT_POLICIES), (False, ("full", "dots"))):
        reference, _ = run(tiny_config("llama", scan_layers=scan), steps=2)
        for policy in policies:
            if policy == "none":
                continue
            rows, _ = run(tiny_config("llama", scan_layers=scan, remat_policy=policy), steps=2)
            np.testing.assert_allclose(rows, reference, rtol=1e-5, err_msg=f"{policy} scan={scan}")
