"""One-shot masks on real model params: exact counts per matrix, the largest magnitudes kept,
N:M groups along the contraction axis, only block kernels touched; bad requests name the
field, the value and the fix."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax import config as config_lib, models
from fmjax.pruning import masks, one_shot, targets as targets_lib
from fmjax.training import state as state_lib
from tests.helpers import tiny_config

BLOCK_KERNELS = {"attn/query/kernel", "attn/key/kernel", "attn/value/kernel", "attn/out/kernel",
                 "mlp/up/kernel", "mlp/down/kernel"}


def model_params(config):
    """(host params, targets) of `config`'s model, params drawn from PRNGKey(0)."""
    model, cfg = models.build(config)
    tokens = jnp.zeros((1, cfg.seq_len), jnp.int32)
    boxed = jax.jit(model.init)(jax.random.PRNGKey(0), tokens)["params"]
    _, abstract_boxed = state_lib.abstract_params(model, cfg.seq_len)
    params = jax.tree.map(np.asarray, nn.unbox(boxed))
    return params, targets_lib.find(abstract_boxed)


def matrices(x, target):
    """[B, I, O] view of a kernel (B: its layers)."""
    return np.asarray(x).reshape(target.matrix_shape)


@pytest.fixture(scope="module", params=[("gpt2", True), ("llama", False)],
                ids=["gpt2_scanned", "llama_unrolled"])
def tiny_model(request):
    family, scan = request.param
    return model_params(tiny_config(family, scan_layers=scan))


def test_targets_are_the_block_kernels_only(tiny_model):
    params, targets = tiny_model
    names = {"/".join(p) for p in targets}
    scanned = all(p[0] == "layers" for p in targets)
    if scanned:
        assert names == {"layers/" + k for k in BLOCK_KERNELS}
    else:  # unrolled llama: two layers, with gate; lm_head stays dense
        assert names == {f"layer_{i}/{k}" for i in (0, 1)
                         for k in BLOCK_KERNELS | {"mlp/gate/kernel"}}
    out = [t for t in targets.values() if t.path[-2] == "out"][0]
    assert out.n_in == 2 and out.in_features == 32  # [heads, head_dim] contract, embed out
    down = [t for t in targets.values() if t.path[-2] == "down"][0]
    assert down.in_features == down.shape[down.lead]  # [mlp, embed]: mlp contracts


@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.9])
def test_unstructured_prunes_exactly_the_smallest_of_each_matrix(tiny_model, sparsity):
    params, targets = tiny_model
    pruned, mask_tree = one_shot.prune(params, targets, method="magnitude", sparsity=sparsity,
                                       pattern="unstructured")
    before, after, kept = masks.flat(params), masks.flat(pruned), masks.flat(mask_tree)
    for path, target in targets.items():
        w, p, m = (matrices(x[path], target) for x in (before, after, kept))
        for layer in range(w.shape[0]):
            n = w[layer].size
            k = math.floor(sparsity * n + 0.5)
            assert (p[layer] == 0).sum() == k and (~m[layer]).sum() == k, (path, layer)
            # every pruned |w| is at most every kept |w|; kept weights are unchanged
            assert np.abs(w[layer][~m[layer]]).max() <= np.abs(w[layer][m[layer]]).min()
            np.testing.assert_array_equal(p[layer][m[layer]], w[layer][m[layer]])
    for path, leaf in before.items():  # everything else is bitwise the same
        if path not in targets:
            assert leaf.tobytes() == np.asarray(after[path]).tobytes(), path


def test_two_four_keeps_the_two_largest_of_every_four_along_the_contraction_axis(tiny_model):
    params, targets = tiny_model
    pruned, _ = one_shot.prune(params, targets, method="magnitude", sparsity=None, pattern="2:4")
    before, after = masks.flat(params), masks.flat(pruned)
    for path, target in targets.items():
        b, i, o = target.matrix_shape
        w = matrices(before[path], target).reshape(b, i // 4, 4, o)
        p = matrices(after[path], target).reshape(b, i // 4, 4, o)
        assert ((p != 0).sum(axis=2) == 2).all(), path  # exactly 2 of each 4 input rows
        top2 = np.sort(np.abs(w), axis=2)[:, :, 2:, :]
        np.testing.assert_array_equal(np.sort(np.abs(p), axis=2)[:, :, 2:, :], top2)
    # the out projection's groups run along head_dim (the contraction's last axis), not embed
    out = [p for p in targets if p[-2] == "out"][0]
    nonzero = np.asarray(after[out]) != 0  # [(layers,) heads, head_dim, embed]
    assert (nonzero.sum(axis=-2) == 2).all()  # head_dim = 4: one group per (head, column)


def test_masks_only_grow_and_ties_go_to_the_lower_index():
    """With the previous masks, weights pruned before are pruned first even if they have
    grown since (scores -inf); equal scores are pruned in flat index order."""
    w = jnp.asarray(np.random.default_rng(0).normal(size=(8, 4)), jnp.float32)
    target = targets_lib.Target(("layer_0", "mlp", "up", "kernel"), (8, 4), 0, 1)
    targets, key = {target.path: target}, jax.random.PRNGKey(0)
    tree = lambda x: {"layer_0": {"mlp": {"up": {"kernel": x}}}}  # noqa: E731
    from fmjax.pruning.methods import magnitude
    first = masks.compute(tree(w), targets, magnitude.score, {target.path: 8}, None, key)
    regrown = tree(jnp.where(masks.flat(first)[target.path], 1e-3, 10.0) * jnp.sign(w))
    second = masks.compute(regrown, targets, magnitude.score, {target.path: 16}, None, key,
                           previous=first)
    a, b = (np.asarray(masks.flat(m)[target.path]) for m in (first, second))
    assert (~a).sum() == 8 and (~b).sum() == 16
    assert not np.any(b & ~a)  # nothing pruned before comes back, though now the largest
    tie = masks.compute(tree(jnp.zeros((8, 4))), targets, magnitude.score, {target.path: 5},
                        None, key)
    assert np.asarray(masks.flat(tie)[target.path]).ravel().tolist() == [False] * 5 + [True] * 27


@pytest.mark.parametrize("kwargs,message", [
    (dict(sparsity=1.0, pattern="unstructured"),
     "config.prune.target_sparsity = 1.0: must be in [0, 1)"),
    (dict(sparsity=-0.1, pattern="unstructured"), "must be in [0, 1)"),
    (dict(sparsity=None, pattern="unstructured"), "unstructured pruning needs a sparsity"),
    (dict(sparsity=0.75, pattern="2:4"), "leave the sparsity out or set it to 0.5"),
    (dict(sparsity=0.5, pattern="4:2"), "config.prune.pattern = '4:2': not a pruning pattern"),
    (dict(sparsity=0.5, pattern="unstructured", method="magnitud"),
     "no such pruning method; add fmjax/pruning/methods/magnitud.py or use one of "
     "['magnitude', 'random']. Did you mean 'magnitude'?"),
])
def test_bad_requests_name_the_field_value_and_fix(kwargs, message):
    kwargs.setdefault("method", "magnitude")
    with pytest.raises(config_lib.ConfigError) as e:
        one_shot.resolve(kwargs["method"], kwargs["sparsity"], kwargs["pattern"])
    assert message in str(e.value)


def test_n_m_needs_a_contraction_size_divisible_by_m():
    params, targets = model_params(tiny_config(d_model=30, n_heads=6))  # head_dim 5
    with pytest.raises(config_lib.ConfigError) as e:
        one_shot.prune(params, targets, method="magnitude", sparsity=None, pattern="2:4")
    assert ("config.prune.pattern = '2:4': kernel layers/attn/key/kernel (2, 30, 6, 5) "
            "contracts over 30 inputs, not a multiple of 4") in str(e.value)
    pruned, _ = one_shot.prune(params, targets, method="magnitude", sparsity=None, pattern="2:6")
    assert masks.zero_fraction(pruned, targets) == pytest.approx(4 / 6)


@pytest.mark.parametrize("field,value,message", [
    ("target_sparsity", 1.5, "config.prune.target_sparsity = 1.5: must be in [0, 1)"),
    ("pattern", "2-4", "config.prune.pattern = '2-4': not a pruning pattern"),
    ("end_step", 0, "config.prune.end_step = 0: must be >= 1"),
    ("frequency", 0, "config.prune.frequency = 0: must be >= 1"),
])
def test_config_validation(field, value, message):
    c = tiny_config()
    c.prune.target_sparsity = 0.5
    c.prune[field] = value
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(c, num_devices=1)
    assert message in str(e.value)
    c = tiny_config()
    c.prune.target_sparsity, c.prune.pattern = 0.75, "2:4"
    with pytest.raises(config_lib.ConfigError, match="set --config.prune.target_sparsity=0.5"):
        config_lib.validate(c, num_devices=1)
