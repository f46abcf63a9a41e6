"""LoRA adapters: which kernels they target, exact identity at init, frozen base under training,
merge for export, sharding over a (data, fsdp, tensor) mesh."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from fmjax.nn import lora
from fmjax import mesh as mesh_lib, models
from fmjax.config import ConfigError
from tests.helpers import packed_batch, tiny_config

RANK, ALPHA = 4, 16.0
MLP_MODULES = {"gpt2": ("up", "down"), "llama": ("gate", "up", "down")}


def _boxed(model, abstract=False):
    def init(rng):
        return model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"]
    if abstract:
        return jax.eval_shape(init, jax.random.PRNGKey(0))
    return jax.jit(init)(jax.random.PRNGKey(0))


def _bits(x):
    x = np.asarray(x)
    return x.view(np.dtype(f"uint{8 * x.dtype.itemsize}"))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("scan", [True, False])
def test_target_paths_find_exactly_the_named_kernels(family, scan):
    config = tiny_config(family, scan_layers=scan)
    model, cfg = models.build(config)
    boxed = _boxed(model, abstract=True)
    stacks = ["layers"] if scan else [f"layer_{i}" for i in range(cfg.n_layers)]
    expected = {(s, "attn", m, "kernel") for s in stacks for m in ("query", "key", "value", "out")}
    expected |= {(s, "mlp", m, "kernel") for s in stacks for m in MLP_MODULES[family]}
    paths = lora.target_paths(boxed, config.lora.targets)  # the default: every projection
    assert len(paths) == len(expected) and set(paths) == expected  # never embed / lm_head
    assert set(lora.target_paths(boxed, ("query", "value"))) == {
        (s, "attn", m, "kernel") for s in stacks for m in ("query", "value")}


def test_adapter_shapes_follow_the_kernel_matrix_view():
    config = tiny_config("llama", scan_layers=True, n_kv_heads=2)
    boxed = _boxed(models.build(config)[0], abstract=True)
    adapters = lora.abstract_adapters(boxed, RANK, config.lora.targets)["layers"]
    L, D, H, G, K, F = 2, 32, 8, 2, 4, 256  # noqa: N806
    expected = {  # in = embed for projections out of the residual, out = embed into it
        ("attn", "query"): ((L, D, RANK), (L, RANK, H, K)),
        ("attn", "key"): ((L, D, RANK), (L, RANK, G, K)),
        ("attn", "out"): ((L, H, K, RANK), (L, RANK, D)),
        ("mlp", "gate"): ((L, D, RANK), (L, RANK, F)),
        ("mlp", "down"): ((L, F, RANK), (L, RANK, D)),
    }
    for (block, name), (a_shape, b_shape) in expected.items():
        a, b = adapters[block][name]["lora_a"], adapters[block][name]["lora_b"]
        assert (a.value.shape, b.value.shape) == (a_shape, b_shape), name
        assert a.names[-1] is None and b.names[1] is None and a.names[0] == b.names[0] == "layers"


def test_unknown_target_and_rank_zero_are_clear_errors():
    config = tiny_config("gpt2")
    boxed = _boxed(models.build(config)[0], abstract=True)
    with pytest.raises(ConfigError, match=r"config.lora.targets = 'qury,value'.*'qury'.*"
                                          r"\['down', 'key', 'out', 'query', 'up', 'value'\]"
                                          r".*Did you mean 'query'"):
        lora.target_paths(boxed, "qury,value")
    with pytest.raises(ConfigError, match="config.lora.targets = 'gate'.*matches no kernel"):
        lora.target_paths(boxed, "gate")  # gpt2 has no gated MLP
    with pytest.raises(ConfigError, match="config.lora.rank = 0"):
        lora.init_adapters(boxed, 0, "query", jax.random.PRNGKey(0))


@functools.lru_cache(maxsize=None)
def _setup(family, scan):
    """(model, params, adapters at init, batch, jitted forward), built once per config."""
    config = tiny_config(family, scan_layers=scan, init_std=0.2)
    model, _ = models.build(config)
    boxed = _boxed(model)
    adapters = jax.jit(lambda rng: nn.unbox(
        lora.init_adapters(boxed, RANK, config.lora.targets, rng)))(jax.random.PRNGKey(1))
    batch = {k: jnp.asarray(v) for k, v in packed_batch().items()}
    forward = jax.jit(lambda p, b: model.apply({"params": p}, b["tokens"], b["segment_ids"],
                                               b["positions"]))
    return model, nn.unbox(boxed), adapters, batch, forward


def _randomize_b(adapters, seed=0):
    """B != 0, as after training, so the adapters change the kernels (numpy: no compiles)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x if path[-1].key == "lora_a" else
        jnp.asarray(0.05 * rng.standard_normal(x.shape), x.dtype), adapters)


def _reference_merge(params, adapters, scale):
    """Independent of lora.py: each kernel type's einsum written out by hand (scanned gpt2)."""
    out = jax.tree.map(lambda x: x, params)
    specs = {("attn", "query"): "lir,lrhk->lihk", ("attn", "key"): "lir,lrhk->lihk",
             ("attn", "value"): "lir,lrhk->lihk", ("attn", "out"): "lhkr,lrd->lhkd",
             ("mlp", "up"): "ldr,lrf->ldf", ("mlp", "down"): "lfr,lrd->lfd"}
    for (block, name), spec in specs.items():
        ad = adapters["layers"][block][name]
        delta = jnp.einsum(spec, ad["lora_a"], ad["lora_b"], precision="highest")
        kernel = params["layers"][block][name]["kernel"]
        out["layers"][block][name]["kernel"] = kernel + scale * delta
    return out


@pytest.mark.parametrize("family,scan", [("gpt2", True), ("llama", False)])
def test_identity_at_init_and_merge_equals_apply(family, scan):
    model, params, adapters, batch, forward = _setup(family, scan)
    # at init the effective params ARE the base params, bit for bit, and so are the logits
    effective = lora.apply(params, adapters, ALPHA, RANK)
    assert jax.tree.structure(effective) == jax.tree.structure(params)
    for e, p in zip(jax.tree.leaves(effective), jax.tree.leaves(params)):
        np.testing.assert_array_equal(_bits(e), _bits(p))
    logits0 = forward(params, batch)
    np.testing.assert_array_equal(forward(effective, batch), logits0)

    adapters = _randomize_b(adapters)
    applied = lora.apply(params, adapters, ALPHA, RANK)
    logits1 = forward(applied, batch)
    assert np.abs(np.asarray(logits1) - np.asarray(logits0)).max() > 1e-3
    merged = jax.device_get(lora.merge(params, adapters, ALPHA, RANK))  # a plain export
    np.testing.assert_allclose(forward(merged, batch), logits1, rtol=1e-5, atol=1e-5)
    if scan:
        reference = _reference_merge(params, adapters, ALPHA / RANK)
        for m, r in zip(jax.tree.leaves(merged), jax.tree.leaves(reference)):
            np.testing.assert_allclose(m, r, rtol=1e-6, atol=1e-6)


def test_training_only_adapters_keeps_the_base_bitwise_frozen():
    model, params, adapters, batch, forward = _setup("llama", True)
    state = {"model": params, "lora": adapters}
    mask = lora.trainable_mask(state)
    assert not any(jax.tree.leaves(mask["model"])) and all(jax.tree.leaves(mask["lora"]))
    tx = lora.masked_optimizer(optax.adam(1e-2), mask)
    opt_state = tx.init(state)
    # Adam keeps mu and nu for the adapters only: no moment array for any base leaf
    moment_sizes = sum(x.size for x in jax.tree.leaves(opt_state) if np.ndim(x) > 0)
    assert moment_sizes == 2 * sum(x.size for x in jax.tree.leaves(adapters))

    @jax.jit
    def step(state, opt_state):
        def loss_fn(s):
            logits = forward(lora.apply(s["model"], s["lora"], ALPHA, RANK), batch)
            return optax.softmax_cross_entropy_with_integer_labels(
                logits[:, :-1], batch["tokens"][:, 1:]).mean()
        loss, grads = jax.value_and_grad(loss_fn)(state)
        updates, opt_state = tx.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, loss

    trained, losses = state, []
    for _ in range(3):
        trained, opt_state, loss = step(trained, opt_state)
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    for new, old in zip(jax.tree.leaves(trained["model"]), jax.tree.leaves(params)):
        np.testing.assert_array_equal(_bits(new), _bits(old))  # frozen, bit for bit
    for new, old in zip(jax.tree.leaves(trained["lora"]), jax.tree.leaves(adapters)):
        assert np.abs(np.asarray(new) - np.asarray(old)).max() > 1e-4  # A and B both moved
    logits0 = forward(params, batch)
    logits1 = forward(lora.apply(params, trained["lora"], ALPHA, RANK), batch)
    assert np.abs(np.asarray(logits1) - np.asarray(logits0)).max() > 1e-3


def test_adapters_shard_over_data_fsdp_tensor_and_give_the_same_logits():
    config = tiny_config("llama", init_std=0.2)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
    mesh = mesh_lib.make_mesh(config)
    model, params, adapters, batch, _ = _setup("llama", True)
    boxed_abstract = _boxed(model, abstract=True)
    shardings = mesh_lib.tree_shardings(
        mesh, lora.abstract_adapters(boxed_abstract, RANK, config.lora.targets))
    attn, mlp = shardings["layers"]["attn"], shardings["layers"]["mlp"]
    assert attn["query"]["lora_a"].spec == P(None, "fsdp", None)
    assert attn["query"]["lora_b"].spec == P(None, None, "tensor", None)
    assert attn["out"]["lora_a"].spec == P(None, "tensor", None, None)
    assert attn["out"]["lora_b"].spec == P(None, None, "fsdp")
    assert mlp["down"]["lora_a"].spec == P(None, "tensor", None)

    adapters = _randomize_b(adapters)

    def forward(p, ad, b):
        return model.apply({"params": lora.apply(p, ad, ALPHA, RANK)}, b["tokens"],
                           b["segment_ids"], b["positions"])

    expected = jax.jit(forward)(params, adapters, batch)
    with mesh_lib.activate(mesh):
        sharded_ad = jax.device_put(adapters, shardings)
        query_a = sharded_ad["layers"]["attn"]["query"]["lora_a"]
        assert query_a.addressable_shards[0].data.shape == (2, 16, RANK)  # embed / fsdp
        sharded_params = jax.device_put(params, mesh_lib.tree_shardings(mesh, boxed_abstract))
        batch = jax.device_put(batch, mesh_lib.batch_sharding(mesh))
        logits = jax.jit(forward)(sharded_params, sharded_ad, batch)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_trainable_mask_trains_adapters_and_named_modules_only():
    from fmjax.models.classifier import build_classifier
    config = tiny_config("llama")
    classifier, _ = build_classifier(config, 3)
    params = nn.unbox(_boxed(classifier, abstract=True))
    adapters = nn.unbox(lora.abstract_adapters(_boxed(classifier, abstract=True), RANK, "query"))
    mask = lora.trainable_mask({"model": params, "lora": adapters}, train_prefixes=("head",))
    assert all(jax.tree.leaves(mask["lora"])) and all(jax.tree.leaves(mask["model"]["head"]))
    assert not any(jax.tree.leaves(mask["model"]["backbone"]))
    assert len(jax.tree.leaves(mask["lora"])) == 2  # one scanned query kernel: A and B
    with pytest.raises(ValueError, match="train prefix 'haed'.*\\['backbone', 'head'\\]"):
        lora.trainable_mask({"model": params, "lora": adapters}, train_prefixes=("haed",))
