"""Encoder (BERT) and encoder-decoder (T5 v1.0 / v1.1) families and the decoder's prefix mask:
who attends to whom (bidirectional, prefix, packed segments, cross-attention), T5's relative
position buckets, scan == unrolled layers, remat, bf16, the attention bias gradient, pooled
features and a (2,2,2) mesh."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.nn import attention
from fmjax import info, mesh as mesh_lib, models
from fmjax.training import state as state_lib
from fmjax.models.classifier import build_classifier
from tests.helpers import tiny_config

ENCODER_DECODER = ("t5", "t5_1_1")
B, T = 2, 32
OVERRIDES = {"bert": dict(init_std=0.2), "gpt2": dict(init_std=0.2)}  # t5: its fan-in init


def _config(family, **model):
    return tiny_config(family, **{**OVERRIDES.get(family, {}), **model})


@functools.lru_cache(maxsize=None)
def _built(family, **model):
    """(model, params, jitted apply), once per (family, overrides)."""
    model_, _ = models.build(_config(family, **model))
    params = nn.unbox(jax.jit(state_lib.init_params_fn(model_, T))(jax.random.PRNGKey(0)))
    return model_, params, jax.jit(functools.partial(model_.apply, {"params": params}))


def _tokens(seed=0, shape=(B, T)):
    return np.random.default_rng(seed).integers(4, 128, shape).astype(np.int32)


def _packed(split):
    """segment ids [1]*split + [2]*(T - split) and per-segment positions, [B, T]."""
    seg = np.where(np.arange(T) < split, 1, 2)
    pos = np.concatenate([np.arange(split), np.arange(T - split)])
    return (np.broadcast_to(seg, (B, T)).astype(np.int32),
            np.broadcast_to(pos, (B, T)).astype(np.int32))


@functools.lru_cache(maxsize=None)
def _jitted_encoder(model):
    def encode(params, tokens, seg, pos):
        _, state = model.apply({"params": params}, tokens, tokens[:, :4], seg, None, pos,
                               capture_intermediates=lambda m, name: m.name == "encoder",
                               mutable=["intermediates"])
        return state["intermediates"]["encoder"]["__call__"][0]
    return jax.jit(encode)


def _encoder_output(model, params, tokens, seg=None, pos=None):
    """T5's encoder output [B, S, D] (captured from the `encoder` submodule)."""
    return np.asarray(_jitted_encoder(model)(params, tokens, seg, pos))


def _position_outputs(family):
    """tokens -> per-position outputs [B, T, *] of the family's (first) stack."""
    model, params, apply = _built(family)
    if family in ENCODER_DECODER:
        return lambda tokens: _encoder_output(model, params, tokens)
    return lambda tokens: np.asarray(apply(tokens))


@pytest.mark.parametrize("family", ["bert", "t5", "gpt2"])
def test_encoders_see_the_future_and_decoders_do_not(family):
    outputs = _position_outputs(family)
    tokens = _tokens()
    changed = tokens.copy()
    changed[:, 20] = (changed[:, 20] + 5) % 128
    before, after = outputs(tokens), outputs(changed)
    earlier = np.abs(before[:, :20] - after[:, :20]).max()
    if family == "gpt2":
        assert earlier == 0.0  # causal: positions before 20 never see token 20
    else:
        assert earlier > 1e-3  # bidirectional: they do
    assert np.abs(before[:, 20:] - after[:, 20:]).max() > 1e-3


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_prefix_mask_is_bidirectional_inside_the_prefix_only(family):
    model, params, apply = _built(family)
    tokens = _tokens()
    prefix = np.zeros((B, T), np.int32)
    prefix[:, :8] = 1

    def out(tok, prefix_mask=prefix):
        return np.asarray(apply(tok, None, None, prefix_mask))

    base = out(tokens)
    np.testing.assert_array_equal(out(tokens, None), out(tokens, np.zeros_like(prefix)))
    assert np.abs(base - out(tokens, None)).max() > 1e-3  # the prefix changes the outputs
    in_prefix = tokens.copy()
    in_prefix[:, 5] = (in_prefix[:, 5] + 5) % 128
    # a prefix position sees a later prefix token; without the prefix mask it does not
    assert np.abs(out(in_prefix)[:, :5] - base[:, :5]).max() > 1e-3
    np.testing.assert_array_equal(out(in_prefix, None)[:, :5], out(tokens, None)[:, :5])
    after_prefix = tokens.copy()
    after_prefix[:, 12] = (after_prefix[:, 12] + 5) % 128
    # nothing before position 12, inside the prefix or not, sees the token at 12
    np.testing.assert_allclose(out(after_prefix)[:, :12], base[:, :12], rtol=0, atol=1e-6)
    assert np.abs(out(after_prefix)[:, 12:] - base[:, 12:]).max() > 1e-3


def test_prefix_mask_with_kv_cache_equals_full_recompute():
    model, params, apply = _built("llama")
    tokens = _tokens(shape=(B, 12))
    prefix = np.zeros((B, 12), np.int32)
    prefix[:, :6] = 1
    full = np.asarray(apply(tokens, None, None, prefix))
    cache = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((B, 12), jnp.int32),
                                              decode=True))["cache"]
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache)

    @jax.jit
    def step(cache, tok, start, prefix_mask):
        pos = jnp.broadcast_to(start + jnp.arange(tok.shape[1]), tok.shape)
        logits, mutated = model.apply({"params": params, "cache": cache}, tok, jnp.ones_like(tok),
                                      pos, prefix_mask, decode=True, mutable=["cache"])
        return logits, mutated["cache"]

    logits, cache = step(cache, tokens[:, :8], 0, prefix[:, :8])  # prefill: prefix + 2 tokens
    np.testing.assert_allclose(np.asarray(logits), full[:, :8], rtol=1e-4, atol=1e-5)
    for i in range(8, 12):
        logits, cache = step(cache, tokens[:, i:i + 1], i, None)
        np.testing.assert_allclose(np.asarray(logits)[:, 0], full[:, i], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_packed_segments_are_isolated_and_equal_to_running_alone(family):
    model, params, apply = _built(family)
    seg, pos = _packed(20)
    tokens = _tokens()
    changed = tokens.copy()
    changed[:, 20:] = (changed[:, 20:] + 7) % 128  # rewrite segment 2
    if family in ENCODER_DECODER:
        outputs = lambda tok: _encoder_output(model, params, tok, seg, pos)  # noqa: E731
        alone = _encoder_output(model, params, tokens[:, 20:])
    else:
        outputs = lambda tok: np.asarray(apply(tok, seg, pos))  # noqa: E731
        alone = np.asarray(apply(tokens[:, 20:]))
    before, after = outputs(tokens), outputs(changed)
    np.testing.assert_allclose(after[:, :20], before[:, :20], rtol=0, atol=1e-6)
    assert np.abs(after[:, 20:] - before[:, 20:]).max() > 1e-3
    # segment 2 with its own positions equals the same text unpacked (relative positions too)
    np.testing.assert_allclose(before[:, 20:], alone, rtol=1e-4, atol=1e-5)


def test_decoder_and_cross_attention_stay_within_their_segment():
    model, params, apply = _built("t5")
    enc_seg, enc_pos = _packed(20)
    dec_seg, dec_pos = (x[:, :16] for x in _packed(10))  # decoder: segment 1 [0, 10), 2 [10, 16)
    enc, dec = _tokens(1), _tokens(2, (B, 16))

    def logits(enc_tokens, dec_tokens):
        return np.asarray(apply(enc_tokens, dec_tokens, enc_seg, dec_seg, enc_pos, dec_pos))

    base = logits(enc, dec)
    enc2 = enc.copy()
    enc2[:, 20:] = (enc2[:, 20:] + 7) % 128  # encoder segment 2
    dec2 = dec.copy()
    dec2[:, 10:] = (dec2[:, 10:] + 7) % 128  # decoder segment 2
    dec_late = dec.copy()
    dec_late[:, 5] = (dec_late[:, 5] + 7) % 128  # decoder segment 1, position 5
    for new, what in ((logits(enc2, dec), "encoder"), (logits(enc, dec2), "decoder")):
        np.testing.assert_allclose(new[:, :10], base[:, :10], rtol=0, atol=1e-6, err_msg=what)
        assert np.abs(new[:, 10:] - base[:, 10:]).max() > 1e-3, what
    late = logits(enc, dec_late)  # causal decoder: position 5 changes only positions >= 5
    np.testing.assert_allclose(late[:, :5], base[:, :5], rtol=0, atol=1e-6)
    assert np.abs(late[:, 5:10] - base[:, 5:10]).max() > 1e-3
    # decoder segment 2 over encoder segment 2, unpacked, gives the same logits
    alone = np.asarray(apply(enc[:, 20:], dec[:, 10:]))
    np.testing.assert_allclose(base[:, 10:], alone, rtol=1e-4, atol=1e-4)


def test_relative_position_buckets_match_hand_computed_values():
    """HF T5's formula with 32 buckets, max distance 128 (relative = key - query)."""
    def bucket(rel, bidirectional, **kw):
        return int(attention.relative_position_bucket(jnp.asarray(rel), bidirectional=bidirectional,
                                                   **kw))
    # bidirectional: 16 buckets a side, exact below 8; later keys in the upper half
    # log buckets: 8 + int(log(n / 8) / log(16) * 8): n=12 -> 9, n=16 -> 10, n=64 -> 14,
    # n=100 -> 15
    for rel, expected in ((0, 0), (-1, 1), (-7, 7), (-8, 8), (-12, 9), (-16, 10), (-64, 14),
                          (-100, 15),
                          (-127, 15), (-5000, 15), (1, 17), (7, 23), (12, 25), (5000, 31)):
        assert bucket(rel, True) == expected, rel
    # causal: every later key is bucket 0; earlier keys exact below 16, then
    # 16 + int(log(n / 16) / log(8) * 16): n=20 -> 17, n=64 -> 26, n=127 -> 31
    for rel, expected in ((3, 0), (0, 0), (-1, 1), (-15, 15), (-16, 16), (-20, 17), (-64, 26),
                          (-127, 31), (-1000, 31)):
        assert bucket(rel, False) == expected, rel
    # other sizes: 8 causal buckets up to distance 20: exact below 4, then
    # 4 + int(log(n / 4) / log(5) * 4)
    distances = (3, 4, 6, 9, 19, 20, 99)
    assert [bucket(-n, False, num_buckets=8, max_distance=20) for n in distances] == \
        [3, 4, 5, 6, 7, 7, 7]


def _stack_unrolled(tree):
    """Unrolled params (layer_0, layer_1, ...) -> the scanned layout (`layers`, leading axis)."""
    if not isinstance(tree, dict):
        return tree
    names = sorted((k for k in tree if k.startswith("layer_")), key=lambda k: int(k[6:]))
    out = {k: _stack_unrolled(v) for k, v in tree.items() if k not in names}
    if names:
        out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *(tree[k] for k in names))
    return out


def _inputs(family, batch=B):
    enc = _tokens(3, (batch, T))
    return (enc,) if family == "bert" else (enc, _tokens(4, (batch, 16)))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["bert", "t5_1_1"])
def test_scanned_layers_equal_unrolled_with_the_same_params(family):
    scanned_model, scanned_params, scanned = _built(family)
    unrolled_model, unrolled_params, unrolled = _built(family, scan_layers=False)
    stacked = _stack_unrolled(unrolled_params)
    assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(jnp.shape, scanned_params)
    inputs = _inputs(family)
    expected = np.asarray(unrolled(*inputs))
    np.testing.assert_allclose(np.asarray(jax.jit(scanned_model.apply)({"params": stacked},
                                                                       *inputs)),
                               expected, rtol=1e-5, atol=1e-5)


@functools.lru_cache(maxsize=None)
def _loss_and_grads(family, **model):
    """Mean-square logits and their gradients on packed rows (segments of 20 + 12)."""
    model_, params, _ = _built(family, **model)
    seg, pos = _packed(20)
    kw = dict(segment_ids_BT=seg, positions_BT=pos) if family == "bert" else dict(
        encoder_segment_ids_BS=seg, encoder_positions_BS=pos)
    inputs = _inputs(family)
    loss = lambda p: jnp.mean(jnp.square(model_.apply({"params": p}, *inputs, **kw)))  # noqa: E731
    return jax.jit(jax.value_and_grad(loss))(params)


def _assert_same_loss_and_grads(a, b, rtol):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    np.testing.assert_allclose(loss_a, loss_b, rtol=rtol)
    assert jax.tree.structure(grads_a) == jax.tree.structure(grads_b)
    for x, y in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["t5", "bert"])
def test_fmjax_attention_matches_jax_nn_attention_with_bias_gradients(family):
    """The CPU attention core (hand-written backward, incl. the relative-bias gradient) against
    jax.nn.dot_product_attention on packed rows."""
    ours = _loss_and_grads(family, attention_impl="fmjax")
    _assert_same_loss_and_grads(ours, _loss_and_grads(family, attention_impl="xla"), 1e-5)
    if family == "t5":
        assert np.abs(np.asarray(ours[1]["encoder"]["rel_bias"]["embedding"])).max() > 0


@pytest.mark.parametrize("family,policy", [("bert", "full"), ("t5", "minimal")])
def test_remat_keeps_logits_and_gradients(family, policy):
    _assert_same_loss_and_grads(_loss_and_grads(family, attention_impl="fmjax"),
                                _loss_and_grads(family, attention_impl="fmjax",
                                                remat_policy=policy), 1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["bert", "t5_1_1"])
def test_bf16_compute_keeps_fp32_params_and_logits(family):
    inputs = _inputs(family)
    _, params, apply = _built(family, dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("float32")}
    logits = np.asarray(apply(*inputs))
    assert logits.dtype == np.float32 and np.isfinite(logits).all()
    ref = np.asarray(_built(family)[2](*inputs))  # the same params computed in float32
    assert 0 < np.abs(logits - ref).max() < 0.1 * np.abs(ref).max()


@pytest.mark.slow
def test_dropout_trains_with_an_rng():
    model_, params, _ = _built("t5", dropout=0.5)
    run = jax.jit(lambda seed: model_.apply({"params": params}, *_inputs("t5"),
                                            deterministic=False,
                                            rngs={"dropout": jax.random.PRNGKey(seed)}))
    assert np.abs(np.asarray(run(0)) - np.asarray(run(1))).max() > 1e-3
    np.testing.assert_array_equal(np.asarray(run(0)), np.asarray(run(0)))


@pytest.mark.slow
def test_pooled_features_and_classifier_over_bert_and_t5():
    for family in ("bert", "t5"):
        config = _config(family)
        classifier, _ = build_classifier(config, 3)
        boxed = jax.eval_shape(lambda r: classifier.init(r, jnp.zeros((1, 8), jnp.int32)),
                               jax.random.PRNGKey(0))["params"]
        backbone_tree = jax.tree.map(jnp.shape, _built(family)[1])
        assert jax.tree.map(lambda b: b.value.shape, boxed["backbone"],
                            is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
                            ) == backbone_tree  # MLM head / decoder declared: checkpoints drop in
    # BERT: the pooler on the first token
    model_, params, _ = _built("bert")
    apply = functools.partial(model_.apply, {"params": params})
    tokens = _tokens()
    features = np.asarray(apply(tokens, return_features=True))
    pooled = np.asarray(apply(tokens, return_pooled=True))
    expected = np.tanh(features[:, 0] @ params["pooler"]["kernel"] + params["pooler"]["bias"])
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-6)
    # T5: the mean over real encoder tokens; padding tokens do not count
    model_, params, _ = _built("t5")
    apply = functools.partial(model_.apply, {"params": params})
    seg = (np.arange(T)[None] < np.array([[T], [12]])).astype(np.int32)
    pooled = np.asarray(apply(tokens, None, seg, return_pooled=True))
    encoded = _encoder_output(model_, params, tokens, seg)
    np.testing.assert_allclose(pooled[1], encoded[1, :12].mean(0), rtol=1e-5, atol=1e-6)
    padded = tokens.copy()
    padded[1, 12:] = 77
    np.testing.assert_array_equal(np.asarray(apply(padded, None, seg, return_pooled=True))[1],
                                  pooled[1])


def test_info_counts_bert_without_its_mlm_head():
    summary = info.summarize(_config("bert"))
    mlm = summary["excluded"]["mlm_head"]
    assert mlm == 32 * 32 + 32 + 2 * 32 + 128  # transform, LayerNorm, output bias
    assert summary["params"] + mlm == summary["total_params"]
    assert sum(summary["breakdown"].values()) == summary["params"]
    assert not any(k.startswith("mlm_head") for k in summary["breakdown"])


@pytest.mark.parametrize("family", ["bert", "t5_1_1"])
def test_mesh_2x2x2_gives_the_logits_of_one_device(family):
    config = _config(family)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
    mesh = mesh_lib.make_mesh(config, jax.devices()[:8])
    model_, params, apply = _built(family)
    inputs = _inputs(family, batch=4)  # rows over data x fsdp = 4
    expected = np.asarray(apply(*inputs))
    with mesh_lib.activate(mesh):
        _, shardings = state_lib.param_shardings(model_, T, mesh)
        sharded = jax.device_put(params, shardings)
        batch = [jax.device_put(x, mesh_lib.batch_sharding(mesh)) for x in inputs]
        logits = jax.jit(lambda p, *x: model_.apply({"params": p}, *x))(sharded, *batch)
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-5)
    query = sharded["layers"]["attn"]["query"]["kernel"] if family == "bert" else \
        sharded["encoder"]["layers"]["attn"]["query"]["kernel"]  # [layers, embed, heads, K]
    assert query.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    if family == "t5_1_1":  # the bias table: heads over tensor, buckets replicated
        table = sharded["encoder"]["rel_bias"]["embedding"]
        assert table.sharding.spec == jax.sharding.PartitionSpec(None, "tensor")
