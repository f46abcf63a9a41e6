"""Span corruption (T5; Raffel et al. 2020, section 3.1.4; span lengths: section 3.3.4).

Noise spans of a packed row are replaced in the encoder input by sentinel ids; the decoder
predicts `sentinel_0 span_0 sentinel_1 span_1 ...`. Sentinel k (the k-th span of the row,
k = 0, 1, ...) is `sentinel_id(config, k)`: pieces + num_sentinels - 1 - k (pieces =
model.vocab_size - tokenizer.extra_ids), where span_corruption.num_sentinels = 0 (default)
means every extra id is a sentinel, so sentinel k = model.vocab_size - 1 - k. T5's released
vocabulary has 32,000 pieces, 100 sentinels and 28 padding rows (vocab 32,128): with
num_sentinels = 100, sentinel k = 32,099 - k = HF's `<extra_id_k>` (configs/t5_small.py).
There must be >= num_spans sentinels (checked when the objective is built).

Lengths. The pipeline packs rows of R raw tokens, R = `row_length(seq_len)`: the largest R with
    num_noise = round(R x noise_density)       (clamped to 1 .. R - 1)
    num_spans = round(num_noise / mean_span_length)   (at least 1)
    R - num_noise + num_spans == seq_len,
so the ENCODER input is exactly seq_len tokens (as T5's random_spans_helper, but without the
EOS it appends: every packed document already carries its own bos ... eos, which stay in the
encoder). The decoder arrays (targets, weights, decoder inputs) are num_noise + num_spans long
(no EOS). Every row has exactly num_noise noise tokens in num_spans spans, whatever its
contents, except a row with fewer than num_noise + num_spans regular tokens (mostly padding),
which gets fewer; the arrays are then padded (segment 0, weight 0). Examples: seq_len 512 ->
R = 569, 85 noise tokens in 28 spans, decoder 113; seq_len 64 -> R = 71, 11 in 4, decoder 15.

Spans. Only regular tokens (segment > 0, not pad / bos / eos / unk; `objectives.regular_tokens`)
are ever noise. Per row, in the sequence of its regular tokens (padding and special tokens left
out), T5's random segmentation: num_noise split into num_spans positive lengths and the other
regular tokens into num_spans positive lengths, each uniformly over compositions, interleaved
non-noise first (so the row's last regular token ends a noise span).

Packed documents. The encoder keeps the row's order: each span's first token becomes its
sentinel, its other regular tokens are dropped, and everything else (including special tokens
that lie between two noise tokens of one span) stays where it was. Segment ids: every encoder
token keeps its own, a sentinel takes the segment of its span's first token; in the decoder the
sentinel has that segment and every target token its own. A span is contiguous among regular
tokens, so it can run across a document boundary (eos / bos stay in the encoder, right after the
sentinel): its tokens from the later document are still targets (the row rebuilds exactly from
encoder + targets, see tests/test_objectives.py) but carry weight 0, so the model is never asked
to predict one document from another's context. Decoder inputs are the targets shifted right
within each decoder segment, 0 (= pad, T5's decoder start id) at each segment's first position;
positions count from 0 within each segment, in the encoder and in the decoder, so cross-attention
by segment id pairs each decoder token with its own document's encoder tokens.

Config (`config.span_corruption`): noise_density, mean_span_length, num_sentinels.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fmjax import objectives
from fmjax.config import ConfigError


def sentinel_count(config) -> int:
    """How many sentinel ids the config reserves (span_corruption.num_sentinels, 0 = all the
    tokenizer's extra ids)."""
    return config.span_corruption.num_sentinels or config.tokenizer.extra_ids


def sentinel_id(config, k):
    """The id of sentinel k (k may be an array): pieces + sentinel_count - 1 - k."""
    pieces = config.model.vocab_size - config.tokenizer.extra_ids
    return pieces + sentinel_count(config) - 1 - k


def span_counts(raw_length: int, noise_density: float, mean_span_length: float):
    """(num_noise, num_spans) of a row of `raw_length` tokens."""
    num_noise = min(max(int(round(raw_length * noise_density)), 1), raw_length - 1)
    return num_noise, max(1, int(round(num_noise / mean_span_length)))


def encoder_length(raw_length: int, noise_density: float, mean_span_length: float) -> int:
    num_noise, num_spans = span_counts(raw_length, noise_density, mean_span_length)
    return raw_length - num_noise + num_spans


def raw_length(seq_len: int, noise_density: float, mean_span_length: float) -> int:
    """The largest R whose encoder input is exactly seq_len (encoder_length(R) is
    non-decreasing in R with steps of 0 or 1, so it takes every value)."""
    r = seq_len
    while encoder_length(r + 1, noise_density, mean_span_length) <= seq_len:
        r += 1
    return r


def random_composition(rng, total, parts: int, size: int):
    """`parts` lengths >= 1 summing to `total` (may be traced), uniform over such compositions:
    the cuts are parts - 1 distinct points of 1 .. total - 1. `size` >= total bounds the
    shapes. With total < parts the trailing lengths are 0 (and all are 0 for total <= 0)."""
    points = jnp.arange(1, size)
    scores = jnp.where(points < total, jax.random.uniform(rng, (size - 1,)), 2.0 + points)
    total = jnp.maximum(total, 0)
    cuts = jnp.minimum(jnp.sort(points[jnp.argsort(scores)[:parts - 1]]), total)
    edges = jnp.concatenate([jnp.zeros((1,), cuts.dtype), cuts, total[None].astype(cuts.dtype)])
    return jnp.diff(edges)


def shift_right_in_segments(x_BT, segment_ids_BT):
    """x shifted right by one within each segment, 0 at each segment's first position."""
    prev_x_BT = jnp.pad(x_BT[:, :-1], ((0, 0), (1, 0)))
    prev_segment_BT = jnp.pad(segment_ids_BT[:, :-1], ((0, 0), (1, 0)))
    return jnp.where((prev_segment_BT == segment_ids_BT) & (segment_ids_BT > 0), prev_x_BT, 0)


class SpanCorruption:
    model_kinds = ("encoder_decoder",)  # t5, t5_1_1

    def __init__(self, config):
        self.config = config
        self.noise_density = config.span_corruption.noise_density
        self.mean_span_length = config.span_corruption.mean_span_length
        self.first_sentinel = sentinel_id(config, 0)
        self.pad_id = config.tokenizer.pad_id

    def row_length(self, seq_len: int) -> int:
        return raw_length(seq_len, self.noise_density, self.mean_span_length)

    def counts(self, row_len: int):
        """(num_noise, num_spans, encoder length, decoder length) of rows of `row_len` tokens."""
        num_noise, num_spans = span_counts(row_len, self.noise_density, self.mean_span_length)
        return num_noise, num_spans, row_len - num_noise + num_spans, num_noise + num_spans

    def corrupt_row(self, tokens_R, segment_ids_R, regular_R, rng):
        """One row -> (encoder tokens, encoder segments, targets, decoder segments, weights)."""
        r = tokens_R.shape[0]
        num_noise, num_spans, enc_len, dec_len = self.counts(r)
        noise_rng, keep_rng = jax.random.split(rng)
        noise_S = random_composition(noise_rng, num_noise, num_spans, num_noise)
        keep_S = random_composition(keep_rng, jnp.sum(regular_R) - num_noise, num_spans, r)
        lengths_P = jnp.stack([keep_S, noise_S], axis=1).reshape(-1)  # pieces: keep, noise, ...
        ends_P = jnp.cumsum(lengths_P)
        compact_R = jnp.cumsum(regular_R) - 1  # index among the row's regular tokens
        piece_R = jnp.searchsorted(ends_P, compact_R, side="right")
        noise_R = regular_R & (piece_R % 2 == 1) & (piece_R < 2 * num_spans)
        span_R = jnp.minimum(piece_R // 2, num_spans - 1)
        first_R = noise_R & (compact_R == (ends_P - lengths_P)[2 * span_R + 1])
        sentinel_R = self.first_sentinel - span_R

        # encoder: the row with each span's first token -> its sentinel, its other tokens dropped
        emit_R = ~noise_R | first_R
        enc_index_R = jnp.where(emit_R, jnp.cumsum(emit_R) - 1, enc_len)  # enc_len: dropped
        enc_tokens_S = jnp.full((enc_len,), self.pad_id, tokens_R.dtype).at[enc_index_R].set(
            jnp.where(first_R, sentinel_R, tokens_R).astype(tokens_R.dtype), mode="drop")
        enc_segments_S = jnp.zeros((enc_len,), segment_ids_R.dtype).at[enc_index_R].set(
            segment_ids_R, mode="drop")

        # decoder: sentinel_k then span k's tokens, for k = 0, 1, ...
        noise_rank_R = jnp.cumsum(noise_R) - 1
        target_index_R = jnp.where(noise_R, noise_rank_R + span_R + 1, dec_len)
        sentinel_index_R = jnp.where(first_R, noise_rank_R + span_R, dec_len)
        span_segment_S = jnp.zeros((num_spans,), segment_ids_R.dtype).at[
            jnp.where(first_R, span_R, num_spans)].set(segment_ids_R, mode="drop")
        same_document_R = (segment_ids_R == span_segment_S[span_R]).astype(jnp.float32)

        def decoder_array(values_R, sentinel_values_R, dtype):
            out_T = jnp.zeros((dec_len,), dtype).at[target_index_R].set(values_R, mode="drop")
            return out_T.at[sentinel_index_R].set(sentinel_values_R, mode="drop")

        targets_T = decoder_array(tokens_R, sentinel_R.astype(tokens_R.dtype), tokens_R.dtype)
        dec_segments_T = decoder_array(segment_ids_R, segment_ids_R, segment_ids_R.dtype)
        weights_T = decoder_array(same_document_R, jnp.ones_like(same_document_R), jnp.float32)
        return enc_tokens_S, enc_segments_S, targets_T, dec_segments_T, weights_T

    def transform(self, batch, rng):
        tokens_BR, segment_ids_BR = batch["tokens"], batch["segment_ids"]
        b, r = tokens_BR.shape
        num_spans = self.counts(r)[1]
        if num_spans > sentinel_count(self.config):  # rows longer than row_length(seq_len)
            raise ValueError(f"rows of {r} tokens need {num_spans} sentinels but the config "
                             f"reserves {sentinel_count(self.config)} (tokenizer.extra_ids = "
                             f"{self.config.tokenizer.extra_ids}, span_corruption."
                             f"num_sentinels = {self.config.span_corruption.num_sentinels})")
        regular_BR = objectives.regular_tokens(tokens_BR, segment_ids_BR, self.config)
        enc_tokens_BS, enc_segments_BS, targets_BT, dec_segments_BT, weights_BT = jax.vmap(
            self.corrupt_row)(tokens_BR, segment_ids_BR, regular_BR, jax.random.split(rng, b))
        inputs = {
            "encoder_tokens_BS": enc_tokens_BS,
            "decoder_tokens_BT": shift_right_in_segments(targets_BT, dec_segments_BT),
            "encoder_segment_ids_BS": enc_segments_BS,
            "decoder_segment_ids_BT": dec_segments_BT,
            "encoder_positions_BS": objectives.segment_offsets(enc_segments_BS),
            "decoder_positions_BT": objectives.segment_offsets(dec_segments_BT)}
        return {"inputs": inputs, "targets": targets_BT, "weights": weights_BT}


@objectives.register("span_corruption")
def make(config):
    sc = config.span_corruption
    if not 0.0 < sc.noise_density < 1.0:
        raise ConfigError(f"config.span_corruption.noise_density = {sc.noise_density}: must be "
                          "in (0, 1); T5 uses --config.span_corruption.noise_density=0.15")
    if sc.mean_span_length < 1.0:
        raise ConfigError(f"config.span_corruption.mean_span_length = {sc.mean_span_length}: "
                          "must be >= 1; T5 uses --config.span_corruption.mean_span_length=3")
    if config.model.seq_len < 2:
        raise ConfigError(f"config.model.seq_len = {config.model.seq_len}: span corruption "
                          "needs at least 2 encoder tokens; set --config.model.seq_len")
    if not 0 <= sc.num_sentinels <= config.tokenizer.extra_ids:
        raise ConfigError(f"config.span_corruption.num_sentinels = {sc.num_sentinels}: must be "
                          f"in 0 .. tokenizer.extra_ids = {config.tokenizer.extra_ids} (the "
                          "sentinels are the first extra ids after the pieces, counted down; "
                          "0 = all of them); HF T5 uses 100 with extra_ids 128")
    objective = SpanCorruption(config)
    r = objective.row_length(config.model.seq_len)
    num_spans = objective.counts(r)[1]
    why = (f"one sentinel per noise span: rows of {r} raw tokens for model.seq_len = "
           f"{config.model.seq_len} have {num_spans} spans")
    if sc.num_sentinels and sc.num_sentinels < num_spans:
        raise ConfigError(f"config.span_corruption.num_sentinels = {sc.num_sentinels}: needs "
                          f"at least {num_spans} ({why}); set "
                          f"--config.span_corruption.num_sentinels={num_spans} (<= "
                          f"tokenizer.extra_ids) or 0 to use every extra id")
    objectives.require_extra_ids(config, num_spans, why)
    return objective
