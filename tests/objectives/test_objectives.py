"""Objective transforms: statistics of masked LM, span corruption and prefix LM over many rows,
never a target or corruption on padding or special tokens, determinism, jit, config checks."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax import objectives
from fmjax.config import ConfigError, base_config
from fmjax.objectives import span_corruption as span_lib

PIECES = 200  # tokenizer pieces; ids 0..3 are pad, bos, eos, unk
PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = (PAD, BOS, EOS, UNK)


def make_config(objective, extra_ids=8, seq_len=128):
    c = base_config()
    c.objective = objective
    c.model.vocab_size = PIECES + extra_ids
    c.tokenizer.extra_ids = extra_ids
    c.model.seq_len = seq_len
    return c


def packed_rows(batch, length, seed=0, mean_doc=40, padding=True):
    """Rows packed like the pipeline: documents [bos] ids [eos] back to back (a row's first
    segment may be a document's tail chunk, without bos), numbered 1, 2, ...; positions count
    from 0 in each; the last document is cut at the row end or followed by padding."""
    rng = np.random.default_rng(seed)
    tokens = np.full((batch, length), PAD, np.int32)
    segments = np.zeros((batch, length), np.int32)
    positions = np.zeros((batch, length), np.int32)
    for b in range(batch):
        t, seg = 0, 0
        fill = length - (int(rng.integers(0, 8)) if padding and rng.random() < 0.5 else 0)
        while t < fill:
            seg += 1
            n = int(rng.integers(1, 2 * mean_doc))
            doc = [BOS] * (seg > 1 or rng.random() < 0.5) + list(rng.integers(4, PIECES, n)) + [EOS]
            doc = doc[:fill - t]
            tokens[b, t:t + len(doc)] = doc
            segments[b, t:t + len(doc)] = seg
            positions[b, t:t + len(doc)] = np.arange(len(doc))
            t += len(doc)
    return {"tokens": tokens, "segment_ids": segments, "positions": positions}


def run(config, batch, seed=0):
    transform = jax.jit(objectives.get(config).transform)
    out = transform({k: jnp.asarray(v) for k, v in batch.items()}, jax.random.PRNGKey(seed))
    return jax.tree.map(np.asarray, out)


def regular(batch):
    return (batch["segment_ids"] > 0) & ~np.isin(batch["tokens"], SPECIALS)


# ---------------------------------------------------------------- masked LM (BERT)

def test_mlm_masks_the_rate_of_regular_tokens_per_row_and_never_specials():
    config = make_config("mlm")
    batch = packed_rows(256, 128)
    out = run(config, batch)
    chosen = out["weights"] > 0
    ok = regular(batch)
    assert not (chosen & ~ok).any()  # never padding, bos, eos, unk
    n = ok.sum(1)
    np.testing.assert_array_equal(chosen.sum(1), np.maximum(1, np.floor(0.15 * n + 0.5)))
    assert abs(chosen.sum() / ok.sum() - 0.15) < 0.005
    np.testing.assert_array_equal(out["targets"][chosen], batch["tokens"][chosen])
    assert (out["targets"][~chosen] == 0).all()
    inputs = out["inputs"]["tokens_BT"]
    np.testing.assert_array_equal(inputs[~chosen], batch["tokens"][~chosen])  # the rest as is
    np.testing.assert_array_equal(out["inputs"]["segment_ids_BT"], batch["segment_ids"])
    np.testing.assert_array_equal(out["inputs"]["positions_BT"], batch["positions"])
    # the chosen positions are spread over the whole row, not bunched at one end
    first_half = chosen[:, :64].sum() / chosen.sum()
    assert 0.45 < first_half < 0.55


def test_mlm_splits_80_mask_10_random_10_kept():
    config = make_config("mlm")
    batch = packed_rows(512, 128, seed=1)
    out = run(config, batch, seed=1)
    chosen = out["weights"] > 0
    original, inputs = batch["tokens"][chosen], out["inputs"]["tokens_BT"][chosen]
    mask_id = config.model.vocab_size - 1
    masked = inputs == mask_id
    changed = ~masked & (inputs != original)
    kept = inputs == original
    regular_ids = PIECES - len(SPECIALS)
    assert chosen.sum() > 9000
    assert abs(masked.mean() - 0.8) < 0.015
    assert abs(changed.mean() - 0.1 * (1 - 1 / regular_ids)) < 0.012
    assert abs(kept.mean() - (0.1 + 0.1 / regular_ids)) < 0.012
    random_ids = inputs[changed]
    assert not np.isin(random_ids, SPECIALS).any() and random_ids.max() < PIECES  # no extra ids
    assert len(np.unique(random_ids)) > 0.9 * regular_ids  # drawn from the whole vocabulary


def test_mlm_random_ids_are_uniform_over_regular_ids_with_any_special_ids():
    config = make_config("mlm")
    config.tokenizer.pad_id, config.tokenizer.bos_id = 0, 5
    config.tokenizer.eos_id, config.tokenizer.unk_id = 9, 199  # 199: the last piece
    objective = objectives.get(config)
    ids = np.asarray(objective.random_regular_ids(jax.random.PRNGKey(0), (200_000,)))
    counts = np.bincount(ids, minlength=config.model.vocab_size)
    assert (counts[[0, 5, 9, 199]] == 0).all() and (counts[PIECES:] == 0).all()
    expected = len(ids) / (PIECES - 4)
    regular_counts = np.delete(counts[:PIECES], [0, 5, 9, 199])
    assert np.abs(regular_counts - expected).max() < 5 * math.sqrt(expected)


def test_mlm_needs_a_mask_id_after_the_pieces():
    with pytest.raises(ConfigError, match=r"config.tokenizer.extra_ids = 0.*'mlm'.*"
                                          r"--config.tokenizer.extra_ids=1"):
        objectives.get(make_config("mlm", extra_ids=0))


# ---------------------------------------------------------------- span corruption (T5)

def split_spans(targets, sentinel_first):
    """Decoder targets -> list of (sentinel id, [positions of its span's tokens]); decoder
    padding (target 0 = pad, never a real target) is left out."""
    spans = []
    for i, token in enumerate(targets):
        if token == PAD:
            continue
        if token >= sentinel_first:
            spans.append((int(token), []))
        elif spans:
            spans[-1][1].append(i)
    return spans


def reconstruct(enc_tokens, enc_segments, targets, dec_segments, sentinel_first):
    """The raw row back from the encoder input and the targets (the module docstring's layout):
    a sentinel expands to its span's tokens of its own document; a span's tokens from a later
    document (weight 0) go at the start of that document, after its bos."""
    heads, tails = {}, {}
    dec_sentinel_segment = {}
    for sentinel, span in split_spans(targets, sentinel_first):
        seg = dec_segments[list(targets).index(sentinel)]
        dec_sentinel_segment[sentinel] = seg
        heads[sentinel] = [targets[i] for i in span if dec_segments[i] == seg]
        for i in span:
            if dec_segments[i] != seg:
                assert dec_segments[i] > seg  # only ever into a LATER document of the row
                tails.setdefault(dec_segments[i], []).append(targets[i])
    row = []
    for i, (token, seg) in enumerate(zip(enc_tokens, enc_segments)):
        starts = i == 0 or enc_segments[i - 1] != seg
        if starts and token != BOS:
            row += tails.pop(seg, [])
        if token >= sentinel_first:
            assert dec_sentinel_segment[token] == seg
            row += heads.pop(token)
        else:
            row.append(token)
        if starts and token == BOS:
            row += tails.pop(seg, [])
    assert not heads and not tails
    return row


@pytest.fixture(scope="module")
def span_run():
    config = make_config("span_corruption")
    objective = objectives.get(config)
    raw = objective.row_length(config.model.seq_len)
    batch = packed_rows(256, raw, seed=2)
    return config, objective, batch, run(config, batch, seed=2)


def test_span_corruption_lengths_fill_seq_len_exactly():
    for seq_len in range(2, 700):  # T5's random_spans_helper arithmetic, without the EOS
        raw = span_lib.raw_length(seq_len, 0.15, 3.0)
        noise, spans = span_lib.span_counts(raw, 0.15, 3.0)
        assert raw - noise + spans == seq_len
        assert span_lib.encoder_length(raw + 1, 0.15, 3.0) > seq_len  # the longest such row
    assert span_lib.raw_length(512, 0.15, 3.0) == 569
    assert span_lib.span_counts(569, 0.15, 3.0) == (85, 28)


def test_span_corruption_shapes_and_full_rows(span_run):
    config, objective, batch, out = span_run
    raw = objective.row_length(128)
    noise, spans = span_lib.span_counts(raw, 0.15, 3.0)
    inputs = out["inputs"]
    assert batch["tokens"].shape == (256, raw) and (raw, noise, spans) == (142, 21, 7)
    for key in ("encoder_tokens_BS", "encoder_segment_ids_BS", "encoder_positions_BS"):
        assert inputs[key].shape == (256, 128)
    for key in ("decoder_tokens_BT", "decoder_segment_ids_BT", "decoder_positions_BT"):
        assert inputs[key].shape == (256, noise + spans)
    assert out["targets"].shape == out["weights"].shape == (256, noise + spans)
    # a row without padding fills the encoder and the decoder completely
    full = (batch["segment_ids"] > 0).all(1)
    assert full.sum() > 50
    assert (inputs["encoder_segment_ids_BS"][full] > 0).all()
    assert (inputs["decoder_segment_ids_BT"][full] > 0).all()
    # padded rows: encoder padding only at the end, as many pads as the raw row had
    pads = (batch["segment_ids"] == 0).sum(1)
    np.testing.assert_array_equal((inputs["encoder_segment_ids_BS"] == 0).sum(1), pads)


def test_span_corruption_noise_density_and_span_lengths(span_run):
    config, objective, batch, out = span_run
    raw = batch["tokens"].shape[1]
    sentinel_first = config.model.vocab_size - config.tokenizer.extra_ids
    lengths, noise_fraction, firsts = [], [], []
    for b in range(len(batch["tokens"])):
        spans = split_spans(out["targets"][b], sentinel_first)
        assert len(spans) == 7
        span_lengths = [len(s) for _, s in spans]
        lengths += span_lengths
        firsts.append(span_lengths[0])
        noise_fraction.append(sum(span_lengths) / raw)
    assert abs(np.mean(noise_fraction) - 0.15) < 0.003  # 21 / 142 = 0.148
    assert np.mean(lengths) == pytest.approx(3.0)  # 21 noise tokens in 7 spans
    # random lengths, not fixed ones: a uniform composition of 21 into 7 parts has
    # P(length 1) = C(19, 5) / C(20, 6) = 0.3, and lengths of 7 and more occur
    assert abs(np.mean(np.asarray(lengths) == 1) - 0.3) < 0.03
    assert max(lengths) >= 7 and min(lengths) == 1
    assert 2.7 < np.mean(firsts) < 3.3


def test_span_corruption_sentinels_and_reconstruction(span_run):
    config, objective, batch, out = span_run
    vocab = config.model.vocab_size
    sentinel_first = vocab - config.tokenizer.extra_ids
    inputs = out["inputs"]
    crossings = 0
    for b in range(len(batch["tokens"])):
        enc = inputs["encoder_tokens_BS"][b]
        targets = out["targets"][b]
        enc_sentinels = enc[enc >= sentinel_first]
        dec_sentinels = targets[targets >= sentinel_first]
        expected = vocab - 1 - np.arange(7)  # sentinel k = vocab - 1 - k, from the vocab's end
        np.testing.assert_array_equal(enc_sentinels, expected)
        np.testing.assert_array_equal(dec_sentinels, expected)
        assert targets[0] == vocab - 1  # the targets start with sentinel 0
        row = reconstruct(list(enc), list(inputs["encoder_segment_ids_BS"][b]), list(targets),
                          list(inputs["decoder_segment_ids_BT"][b]), sentinel_first)
        np.testing.assert_array_equal(row, batch["tokens"][b])
        crossings += (out["weights"][b][inputs["decoder_segment_ids_BT"][b] > 0] == 0).sum()
    assert crossings > 0  # spans running into the next document were exercised


def test_span_corruption_loss_only_on_noise_of_the_sentinels_document(span_run):
    config, objective, batch, out = span_run
    sentinel_first = config.model.vocab_size - config.tokenizer.extra_ids
    inputs = out["inputs"]
    targets, weights = out["targets"], out["weights"]
    dec_segments = inputs["decoder_segment_ids_BT"]
    real = dec_segments > 0
    assert not np.isin(targets[real], SPECIALS).any()  # never pad / bos / eos / unk
    assert (weights[~real] == 0).all() and (targets[~real] == 0).all()
    # every raw token is either in the encoder or a target, never both: counts add up
    enc = inputs["encoder_tokens_BS"]
    kept = ((enc < sentinel_first) & (inputs["encoder_segment_ids_BS"] > 0)).sum(1)
    noise = (real & (targets < sentinel_first)).sum(1)
    np.testing.assert_array_equal(kept + noise, (batch["segment_ids"] > 0).sum(1))
    # special tokens all stay in the encoder
    for special in (BOS, EOS):
        np.testing.assert_array_equal((enc == special).sum(1), (batch["tokens"] == special).sum(1))
    # weight 1 exactly on sentinels and on span tokens of the sentinel's own document
    for b in range(len(targets)):
        seg = 0
        for i, token in enumerate(targets[b]):
            if not real[b, i]:
                continue
            if token >= sentinel_first:
                seg = dec_segments[b, i]
            assert weights[b, i] == (1.0 if dec_segments[b, i] == seg else 0.0)


def test_span_corruption_decoder_inputs_and_positions(span_run):
    config, objective, batch, out = span_run
    inputs = out["inputs"]
    for prefix, tokens in (("encoder", None), ("decoder", out["targets"])):
        segments = inputs[f"{prefix}_segment_ids_{'BS' if prefix == 'encoder' else 'BT'}"]
        positions = inputs[f"{prefix}_positions_{'BS' if prefix == 'encoder' else 'BT'}"]
        for b in range(len(segments)):
            expected, shifted = [], []
            for i, seg in enumerate(segments[b]):
                starts = i == 0 or segments[b, i - 1] != seg
                expected.append(0 if seg == 0 or starts else expected[-1] + 1)
                if tokens is not None:
                    shifted.append(0 if seg == 0 or starts else tokens[b, i - 1])
            np.testing.assert_array_equal(positions[b], expected)
            if tokens is not None:
                np.testing.assert_array_equal(inputs["decoder_tokens_BT"][b], shifted)


def test_span_corruption_short_rows_stay_inside_their_arrays():
    """A row mostly padding (fewer regular tokens than noise + spans) gets fewer spans."""
    config = make_config("span_corruption")
    objective = objectives.get(config)
    raw = objective.row_length(128)
    batch = packed_rows(4, raw, seed=3)
    for b, n in enumerate((0, 1, 10, 27)):  # 27 = 21 noise + 7 spans - 1
        batch["tokens"][b] = PAD
        batch["segment_ids"][b] = 0
        batch["positions"][b] = 0
        batch["tokens"][b, :n] = np.arange(n) + 10
        batch["segment_ids"][b, :n] = 1
        batch["positions"][b, :n] = np.arange(n)
    out = run(config, batch)
    sentinel_first = config.model.vocab_size - config.tokenizer.extra_ids
    for b in range(4):
        row = reconstruct(list(out["inputs"]["encoder_tokens_BS"][b]),
                          list(out["inputs"]["encoder_segment_ids_BS"][b]),
                          list(out["targets"][b]), list(out["inputs"]["decoder_segment_ids_BT"][b]),
                          sentinel_first)
        assert row[:raw] == list(batch["tokens"][b][:len(row)])
        assert (out["inputs"]["encoder_segment_ids_BS"][b] > 0).sum() <= 128


def test_span_corruption_needs_a_sentinel_per_span():
    with pytest.raises(ConfigError, match=r"config.tokenizer.extra_ids = 6.*needs at least 7 "
                                          r".*--config.tokenizer.extra_ids=7"):
        objectives.get(make_config("span_corruption", extra_ids=6))


@pytest.mark.parametrize("num_sentinels,first", [(100, 32099), (0, 32127)])
def test_span_corruption_sentinel_ids_follow_num_sentinels(num_sentinels, first):
    """T5's released vocabulary: 32,000 pieces, 128 extra ids. num_sentinels = 100 puts
    sentinel k at 32,099 - k (HF's <extra_id_k>); 0 keeps every extra id a sentinel, k at
    vocab - 1 - k. Encoder and decoder name a row's spans first, first - 1, ... in order."""
    config = make_config("span_corruption", extra_ids=128)
    config.model.vocab_size = 32128
    config.span_corruption.num_sentinels = num_sentinels
    assert span_lib.sentinel_id(config, 0) == first
    batch = packed_rows(16, objectives.get(config).row_length(128), seed=6)
    out = run(config, batch, seed=6)
    spans = span_lib.span_counts(batch["tokens"].shape[1], 0.15, 3.0)[1]
    expected = list(range(first, first - spans, -1))
    full = np.flatnonzero((batch["segment_ids"] > 0).all(1))
    assert len(full) >= 4
    for b in full:
        enc = out["inputs"]["encoder_tokens_BS"][b]
        targets = out["targets"][b]
        assert list(enc[enc >= 32000]) == expected
        assert list(targets[targets >= 32000]) == expected


def test_span_corruption_num_sentinels_is_checked():
    config = make_config("span_corruption", extra_ids=128)
    config.span_corruption.num_sentinels = 129
    with pytest.raises(ConfigError, match=r"num_sentinels = 129: must be in 0 .. "
                                          r"tokenizer.extra_ids = 128"):
        objectives.get(config)
    config.span_corruption.num_sentinels = 6  # seq_len 128: 7 spans
    with pytest.raises(ConfigError, match=r"num_sentinels = 6: needs at least 7 .*"
                                          r"--config.span_corruption.num_sentinels=7"):
        objectives.get(config)


# ---------------------------------------------------------------- prefix LM

def test_prefix_lm_weights_only_after_the_prefix():
    config = make_config("prefix_lm")
    batch = packed_rows(64, 128, seed=4)
    out = run(config, batch, seed=4)
    prefix = out["inputs"]["prefix_mask_BT"]
    seg = batch["segment_ids"]
    assert out["inputs"]["prefix_mask_BT"].dtype == np.int32
    assert (prefix[seg == 0] == 0).all()
    next_seg = np.pad(seg[:, 1:], ((0, 0), (0, 1)))
    next_prefix = np.pad(prefix[:, 1:], ((0, 0), (0, 1)))
    expected = (seg > 0) & (next_seg == seg) & (next_prefix == 0)
    np.testing.assert_array_equal(out["weights"], expected.astype(np.float32))
    next_tokens = np.pad(batch["tokens"][:, 1:], ((0, 0), (0, 1)))
    np.testing.assert_array_equal(out["targets"], np.where(expected, next_tokens, 0))
    for b in range(64):
        for s in range(1, seg[b].max() + 1):
            p = prefix[b][seg[b] == s]
            k = int(p.sum())
            assert (p[:k] == 1).all()  # the prefix is the segment's start
            if len(p) >= 2:
                assert 1 <= k <= len(p) - 1  # a prefix and at least one token to predict
    assert out["weights"].sum() > 0


def test_prefix_lm_lengths_are_uniform_over_the_range():
    config = make_config("prefix_lm")
    n, docs = 20, 6  # 6 documents of 20 tokens per row
    rows = lambda row: np.broadcast_to(row, (400, n * docs)).astype(np.int32)
    batch = {"tokens": rows(7), "segment_ids": rows(np.repeat(np.arange(1, docs + 1), n)),
             "positions": rows(np.tile(np.arange(n), docs))}
    prefix = run(config, batch, seed=5)["inputs"]["prefix_mask_BT"]
    lengths = prefix.reshape(400 * docs, n).sum(1)
    counts = np.bincount(lengths, minlength=n + 1)
    assert counts[0] == 0 and counts[n] == 0
    expected = 400 * docs / (n - 1)  # uniform over 1 .. 19
    assert np.abs(counts[1:n] - expected).max() < 5 * math.sqrt(expected)
    # segments draw independently (not one length per row)
    assert (lengths.reshape(400, docs).std(1) > 0).mean() > 0.95


# ---------------------------------------------------------------- every objective

def test_next_next_token_targets_two_ahead_in_the_same_segment():
    config = make_config("next_next_token")
    batch = packed_rows(8, 64, seed=6)
    out = run(config, batch)
    seg, tokens = batch["segment_ids"], batch["tokens"]
    ahead_seg = np.pad(seg[:, 2:], ((0, 0), (0, 2)))
    expected = (seg > 0) & (ahead_seg == seg)
    np.testing.assert_array_equal(out["weights"], expected)
    np.testing.assert_array_equal(out["targets"],
                                  np.where(expected, np.pad(tokens[:, 2:], ((0, 0), (0, 2))), 0))


RANDOM_OBJECTIVES = ["mlm", "span_corruption", "prefix_lm"]


@pytest.mark.slow
@pytest.mark.parametrize("name", RANDOM_OBJECTIVES)
def test_deterministic_given_the_rng_and_jittable(name):
    config = make_config(name)
    batch = {k: jnp.asarray(v) for k, v in packed_rows(8, objectives.row_length(config),
                                                       seed=7).items()}
    transform = objectives.get(config).transform
    jitted = jax.jit(transform)
    a, b = jitted(batch, jax.random.PRNGKey(11)), jitted(batch, jax.random.PRNGKey(11))
    eager = transform(batch, jax.random.PRNGKey(11))
    other = jitted(batch, jax.random.PRNGKey(12))
    for x, y, z in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(eager)):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)
    assert any((x != y).any() for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(other)))


def test_row_length_and_model_kinds():
    assert objectives.row_length(make_config("causal_lm")) == 128
    assert objectives.row_length(make_config("mlm")) == 128
    assert objectives.row_length(make_config("span_corruption")) == 142
    kinds = {name: objectives.get(make_config(name)).model_kinds
             for name in ("causal_lm", "mlm", "span_corruption", "prefix_lm", "next_next_token")}
    assert kinds == {"causal_lm": ("decoder",), "mlm": ("encoder",),
                     "span_corruption": ("encoder_decoder",), "prefix_lm": ("decoder",),
                     "next_next_token": ("decoder",)}
    config = make_config("mlm")
    config.model.family = "gpt2"
    objectives.check_model_kind(objectives.get(config), "encoder", config)
    with pytest.raises(ConfigError, match=r"config.objective = 'mlm' trains encoder models but "
                                          r"config.model.family = 'gpt2' is of kind decoder; "
                                          r"set --config.model.family.*causal_lm.*prefix_lm"):
        objectives.check_model_kind(objectives.get(config), "decoder", config)


def test_pipeline_packs_rows_of_the_objectives_length(data_dir):
    """Real packed rows (stdlib corpus, bos/eos per document) at span corruption's raw length;
    the encoder comes out exactly seq_len, and the row rebuilds from encoder + targets."""
    from fmjax.data import pipeline, sp_tokenizer as tokenizer_lib, tokenizer_files
    config = base_config()
    config.objective = "span_corruption"
    config.data.tfds_data_dir = data_dir
    config.model.vocab_size, config.tokenizer.extra_ids = 512 + 8, 8  # the tests' 512 pieces
    config.tokenizer.train_chars = 300_000
    config.model.seq_len = 64
    config.train.global_batch_size, config.train.eval_batches = 8, 2
    tokenizer = tokenizer_files.ensure_tokenizer(config)
    assert tokenizer.vocab_size == 512  # pieces = model.vocab_size - tokenizer.extra_ids
    tokenizer.check_against(config)
    wrong = config.copy_and_resolve_references()
    wrong.tokenizer.extra_ids = 7
    with pytest.raises(tokenizer_lib.TokenizerMismatchError,
                       match=r"vocab_size = 520 with config.tokenizer.extra_ids = 7 expects 513 "
                             r"pieces .* has 512 pieces; set --config.model.vocab_size=519"):
        tokenizer.check_against(wrong)
    row_length = objectives.row_length(config)
    batches = pipeline.make_eval_batches(config, tokenizer, row_length=row_length)
    train = next(pipeline.make_train_iterator(config, tokenizer, row_length=row_length))
    assert train["tokens"].shape == batches[0]["tokens"].shape == (8, 71)
    sentinel_first = config.model.vocab_size - 8
    for batch in batches:
        out = run(config, batch)
        assert out["inputs"]["encoder_tokens_BS"].shape == (8, 64)
        for b in range(8):
            row = reconstruct(*(list(out["inputs"][k][b]) for k in (
                "encoder_tokens_BS", "encoder_segment_ids_BS")), list(out["targets"][b]),
                list(out["inputs"]["decoder_segment_ids_BT"][b]), sentinel_first)
            np.testing.assert_array_equal(row, batch["tokens"][b])
