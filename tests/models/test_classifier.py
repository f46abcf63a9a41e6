"""Sequence classifier over a decoder: param tree a pretrained decoder drops into, pooling of
the last real token."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax import mesh as mesh_lib, models
from fmjax.models.classifier import build_classifier
from tests.helpers import tiny_config

NUM_CLASSES = 3


def _boxed(model, rng=0):
    return jax.jit(lambda r: model.init(r, jnp.zeros((1, 8), jnp.int32))["params"])(
        jax.random.PRNGKey(rng))


def _shapes_and_axes(boxed):
    return jax.tree.map(lambda b: (b.value.shape, b.names), boxed,
                        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


@functools.lru_cache(maxsize=None)
def _classifier(family):
    """(config, classifier, its boxed params), built once per family."""
    config = tiny_config(family, init_std=0.2)
    classifier, _ = build_classifier(config, NUM_CLASSES)
    return config, classifier, _boxed(classifier)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_backbone_tree_is_the_decoders_and_pretrained_params_drop_in(family):
    config, classifier, boxed = _classifier(family)
    decoder, cfg = models.build(config)
    assert set(boxed) == {"backbone", "head"}
    decoder_boxed = jax.eval_shape(lambda r: decoder.init(r, jnp.zeros((1, 8), jnp.int32)),
                                   jax.random.PRNGKey(0))["params"]
    assert _shapes_and_axes(boxed["backbone"]) == _shapes_and_axes(decoder_boxed)  # lm_head too
    assert _shapes_and_axes(boxed["head"]) == {"kernel": ((cfg.d_model, NUM_CLASSES),
                                                          ("embed", "classes")),
                                               "bias": ((NUM_CLASSES,), ("classes",))}
    config = config.copy_and_resolve_references()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2  # 'classes': replicated
    head_sharding = mesh_lib.tree_shardings(mesh_lib.make_mesh(config), boxed)["head"]
    assert head_sharding["kernel"].spec == jax.sharding.PartitionSpec("fsdp", None)

    # the backbone params are a plain decoder's (decoder.apply takes them); with no
    # segment_ids the logits are the head on the decoder's LAST hidden state
    params = nn.unbox(boxed)
    head, decoder_params = params["head"], params["backbone"]
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 16), 4, 128)
    logits = jax.jit(classifier.apply)({"params": params}, tokens)
    features = jax.jit(lambda p, t: decoder.apply({"params": p}, t, return_features=True))(
        decoder_params, tokens)
    np.testing.assert_allclose(logits, features[:, -1] @ head["kernel"] + head["bias"],
                               rtol=1e-5, atol=1e-5)
    assert logits.shape == (2, NUM_CLASSES) and logits.dtype == jnp.float32


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_pools_the_last_real_token(family):
    _, classifier, boxed = _classifier(family)
    params = nn.unbox(boxed)
    lengths = np.array([16, 10, 5, 1])
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 128, (4, 16)).astype(np.int32)
    segment_ids = (np.arange(16)[None] < lengths[:, None]).astype(np.int32)
    tokens[segment_ids == 0] = 0
    forward = jax.jit(lambda t, s: classifier.apply({"params": params}, t, s))
    logits = np.asarray(forward(tokens, segment_ids))

    padded = tokens.copy()
    padded[segment_ids == 0] = 77  # other token ids in the padding
    np.testing.assert_allclose(forward(padded, segment_ids), logits, rtol=0, atol=1e-6)

    for row, n in enumerate(lengths):
        changed = tokens.copy()
        changed[row, n - 1] = (changed[row, n - 1] + 5) % 128  # the last real token
        new = np.asarray(forward(changed, segment_ids))
        assert np.abs(new[row] - logits[row]).max() > 1e-4
        others = np.arange(4) != row
        np.testing.assert_array_equal(new[others], logits[others])


def test_too_few_classes_is_a_clear_error():
    with pytest.raises(ValueError, match="config.task.num_classes = 1"):
        build_classifier(tiny_config("gpt2"), 1)


def test_sentence_pair_token_types_reach_bert_and_are_ignored_by_decoders():
    """The classification objective passes a pair's token types (0 on text A, 1 on text B):
    BERT embeds them, a decoder family has no such input and gets the same logits."""
    from fmjax import objectives
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 128, (2, 8)).astype(np.int32)
    pair = {"tokens": tokens, "segment_ids": np.ones((2, 8), np.int32),
            "positions": np.tile(np.arange(8, dtype=np.int32), (2, 1)),
            "token_types": np.tile((np.arange(8) >= 4).astype(np.int32), (2, 1)),
            "labels": np.zeros(2, np.int32), "weights": np.ones(2, np.float32)}
    single = {**pair, "token_types": np.zeros((2, 8), np.int32)}
    for family, differs in (("bert", True), ("gpt2", False)):
        config = tiny_config(family, init_std=0.2)
        config.objective = "classification"
        objective = objectives.get(config)
        classifier, _ = build_classifier(config, NUM_CLASSES)
        params = nn.unbox(_boxed(classifier))
        logits = [np.asarray(jax.jit(classifier.apply)({"params": params},
                                                       **objective.transform(batch)["inputs"]))
                  for batch in (pair, single)]
        assert (np.abs(logits[0] - logits[1]).max() > 1e-4) == differs, family
