"""Mixture of experts (fmjax/nn/moe.py): the sorted, grouped-matmul dispatch against a dense
per-token reference, capacity drops, the auxiliary losses' values, the layer stack with
interval > 1, and their path into the train step's loss and metrics."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax import models
from fmjax.nn import layers, moe
from fmjax.training import step as step_lib
from tests.helpers import packed_batch, tiny_config

N, D, F, E, K = 24, 8, 16, 4, 2


def weights(seed=0, gated=True):
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    gate = jax.random.normal(ks[0], (E, D, F)) if gated else None
    return gate, jax.random.normal(ks[1], (E, D, F)), jax.random.normal(ks[2], (E, F, D))


def routing(seed=1):
    logits_NE = jax.random.normal(jax.random.PRNGKey(seed), (N, E))
    return moe.route(logits_NE, K, renormalize=True)


def reference(x_ND, experts_NK, weights_NK, gate, up, down, activation, keep_NK=None):
    """Each token through each of its experts one at a time (no sorting, no grouping)."""
    act, _ = layers.MLP_ACTIVATIONS[activation]
    y = np.zeros((N, D), np.float32)
    for n in range(N):
        for k in range(K):
            if keep_NK is not None and not keep_NK[n, k]:
                continue
            e = int(experts_NK[n, k])
            h = x_ND[n] @ up[e]
            h = act(h) if gate is None else act(x_ND[n] @ gate[e]) * h
            y[n] += float(weights_NK[n, k]) * np.asarray(h @ down[e])
    return y


@pytest.mark.parametrize("activation", ["swiglu", "relu"])
def test_dropless_dispatch_equals_per_token_experts(activation):
    x_ND = jax.random.normal(jax.random.PRNGKey(2), (N, D))
    weights_NK, experts_NK, _ = routing()
    gate, up, down = weights(gated=layers.MLP_ACTIVATIONS[activation][1])
    y_ND, dropped = moe.expert_ffn(x_ND, experts_NK, weights_NK, gate, up, down,
                                   activation=activation)
    want = reference(x_ND, experts_NK, weights_NK, gate, up, down, activation)
    np.testing.assert_allclose(y_ND, want, rtol=1e-4, atol=1e-4)
    assert int(dropped) == 0


def test_capacity_drops_the_latest_tokens_of_a_full_expert_and_counts_them():
    x_ND = jax.random.normal(jax.random.PRNGKey(2), (N, D))
    weights_NK, experts_NK, _ = routing()
    gate, up, down = weights()
    cf = 0.5  # capacity ceil(0.5 * 24 * 2 / 4) = 6 assignments per expert
    y_ND, dropped = moe.expert_ffn(x_ND, experts_NK, weights_NK, gate, up, down,
                                   activation="swiglu", capacity_factor=cf)
    seen, keep = {}, np.zeros((N, K), bool)
    for n in range(N):  # first come, first served in token order (then k)
        for k in range(K):
            e = int(experts_NK[n, k])
            seen[e] = seen.get(e, 0) + 1
            keep[n, k] = seen[e] <= 6
    assert int(dropped) == (~keep).sum() > 0
    want = reference(x_ND, experts_NK, weights_NK, gate, up, down, "swiglu", keep)
    np.testing.assert_allclose(y_ND, want, rtol=1e-4, atol=1e-4)


def test_row_capacity_zeroes_the_latest_assignments_of_each_row_and_counts_them():
    weights_NK, experts_NK, _ = routing()
    experts_BTK, weights_BTK = experts_NK.reshape(2, N // 2, K), weights_NK.reshape(2, N // 2, K)
    kept_BTK, dropped = moe.limit_per_row(experts_BTK, weights_BTK, E, 3)
    keep = np.zeros((2, N // 2, K), bool)
    for b in range(2):  # each row on its own: first come in (token, k) order
        seen = {}
        for t in range(N // 2):
            for k in range(K):
                e = int(experts_BTK[b, t, k])
                seen[e] = seen.get(e, 0) + 1
                keep[b, t, k] = seen[e] <= 3
    assert int(dropped) == (~keep).sum() > 0
    np.testing.assert_array_equal(kept_BTK, np.where(keep, weights_BTK, 0))


def test_routing_weights_and_auxiliary_losses():
    logits_NE = jax.random.normal(jax.random.PRNGKey(3), (N, E))
    w_NK, experts_NK, probs_NE = moe.route(logits_NE, K, renormalize=True)
    np.testing.assert_allclose(w_NK.sum(-1), 1.0, rtol=1e-6)
    w1_NK, experts1_NK, _ = moe.route(logits_NE, 1, renormalize=False)  # Switch: top-1 prob
    np.testing.assert_allclose(w1_NK[:, 0], probs_NE.max(-1), rtol=1e-6)
    assert (experts1_NK[:, 0] == probs_NE.argmax(-1)).all()
    # uniform router, every expert chosen equally often: load balance 1, z = log(E)^2
    uniform_NE = jnp.zeros((N, E))
    even_NK = (jnp.arange(N * K) % E).reshape(N, K)
    lb, z = moe.aux_losses(uniform_NE, jax.nn.softmax(uniform_NE), even_NK, jnp.ones(N, bool))
    np.testing.assert_allclose([lb, z], [1.0, np.log(E) ** 2], rtol=1e-6)
    # all tokens to expert 0 with all the probability there: E
    skewed_NE = jnp.zeros((N, E)).at[:, 0].set(100.0)
    lb, _ = moe.aux_losses(skewed_NE, jax.nn.softmax(skewed_NE), jnp.zeros((N, 1), jnp.int32),
                           jnp.ones(N, bool))
    np.testing.assert_allclose(lb, E, rtol=1e-5)
    # padding (real = False) does not count
    real = jnp.arange(N) < N // 2
    lb_half, z_half = moe.aux_losses(logits_NE[:N // 2], probs_NE[:N // 2], experts_NK[:N // 2],
                                     jnp.ones(N // 2, bool))
    np.testing.assert_allclose(moe.aux_losses(logits_NE, probs_NE, experts_NK, real),
                               [lb_half, z_half], rtol=1e-6)


def moe_config(family="llama", **moe_fields):
    c = tiny_config(family, n_layers=4)
    c.model.moe.num_experts, c.model.moe.top_k = 4, 2
    for k, v in moe_fields.items():
        c.model.moe[k] = v
    return c


def init(config):
    model, cfg = models.build(config)
    tokens = jnp.asarray(packed_batch(batch=2)["tokens"])
    params = nn.unbox(model.init(jax.random.PRNGKey(0), tokens)["params"])
    return model, params, tokens


def test_interval_groups_blocks_and_scanned_equals_unrolled():
    """interval 2: the scan's unit is two blocks, the second sparse; the same weights give the
    same logits unrolled (layer_g/block_j)."""
    config = moe_config(interval=2, num_shared_experts=1)
    model, params, tokens = init(config)
    layer_tree = params["layers"]
    assert set(layer_tree) == {"block_0", "block_1"}
    assert layer_tree["block_0"]["mlp"]["up"]["kernel"].shape == (2, 32, 256)  # dense, L/2
    experts = layer_tree["block_1"]["mlp"]["experts"]
    assert experts["gate"].shape == (2, 4, 32, 256) and experts["down"].shape == (2, 4, 256, 32)
    assert layer_tree["block_1"]["mlp"]["shared"]["up"]["kernel"].shape == (2, 32, 256)
    assert layer_tree["block_1"]["mlp"]["router"]["kernel"].shape == (2, 32, 4)
    logits = model.apply({"params": params}, tokens)
    config.model.scan_layers = False
    unrolled_model, _ = models.build(config)
    flat = {k: v for k, v in params.items() if k != "layers"}
    for g in range(2):
        flat[f"layer_{g}"] = jax.tree.map(lambda x, g=g: x[g], params["layers"])
    np.testing.assert_allclose(unrolled_model.apply({"params": flat}, tokens), logits,
                               rtol=1e-5, atol=1e-5)


def test_aux_collection_holds_one_value_per_sparse_layer():
    model, params, tokens = init(moe_config(interval=2))
    _, state = model.apply({"params": params}, tokens, mutable=[moe.AUX])
    metrics = moe.aux_metrics(state[moe.AUX])
    leaves = jax.tree_util.tree_leaves(state[moe.AUX])
    assert [leaf.shape for leaf in leaves] == [(2,)] * 3  # 2 sparse layers of 4
    assert metrics["load_balance"] >= 1.0 - 1e-6 and metrics["router_z"] > 0
    assert float(metrics["dropped"]) == 0.0


def test_train_step_adds_weighted_aux_losses_and_reports_them():
    """loss sums = ce + weight sum x (w_lb x lb + w_z x z); metrics carry the raw values."""
    config = moe_config(load_balance_loss=0.5, router_z_loss=0.25)
    model, params, _ = init(config)
    from fmjax import objectives
    objective = objectives.get(config)
    batch = {k: jnp.asarray(v) for k, v in packed_batch(batch=2).items()}
    options = step_lib.StepOptions.from_config(config)
    rng = jax.random.PRNGKey(0)
    loss, (ce, w, aux) = step_lib._loss_sums(model, objective, 0.0, params, batch, rng, True,
                                             options.moe_weights)
    np.testing.assert_allclose(loss, ce + w * (0.5 * aux["load_balance"] + 0.25 * aux["router_z"]),
                               rtol=1e-6)
    dense_loss, (dense_ce, _, dense_aux) = step_lib._loss_sums(model, objective, 0.0, params,
                                                               batch, rng, True, None)
    assert dense_aux == {} and float(dense_loss) == float(dense_ce) == float(ce)
    # the router's gradient feels the aux losses
    grad = jax.grad(lambda p: step_lib._loss_sums(model, objective, 0.0, p, batch, rng, True,
                                                  {"load_balance": 1.0, "router_z": 0.0})[0])
    grad0 = jax.grad(lambda p: step_lib._loss_sums(model, objective, 0.0, p, batch, rng, True,
                                                   {"load_balance": 0.0, "router_z": 0.0})[0])
    router = ("layers", "mlp", "router", "kernel")

    def pick(tree):
        for k in router:
            tree = tree[k]
        return tree
    assert not np.allclose(pick(grad(params)), pick(grad0(params)))
