"""Log-likelihood of continuations given contexts for decoder models, by lm-evaluation-harness's
definition: the context's tokens joined with the continuation's, and the sum of the
log-probabilities of the continuation's tokens only (plus whether greedy decoding would have
produced exactly them). A request longer than the model's rows loses tokens from the left of
its context, as the harness truncates, and is counted.

Speed: requests are sorted by length into a few buckets of row lengths (the model's length and
its halves), packed into rows of their bucket's length with segment ids (a request never
attends to another), longest first into the first row with room, and each bucket's rows run in
batches of one shape with the same tokens per batch, sharded over the mesh's batch axes: one
program per bucket is compiled however many requests there are.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


BUCKETS = 3  # row lengths requests are sorted into: the model's length, its half, its quarter
MIN_BUCKET = 64  # no bucket shorter than this
# a request goes to the shortest bucket whose rows hold this many like it (so packing fills
# them), else to the longest
REQUESTS_PER_ROW = 4


@dataclasses.dataclass(frozen=True)
class Request:
    context_ids: tuple[int, ...]  # may be empty only if continuation_ids has 2+ tokens
    continuation_ids: tuple[int, ...]  # at least one token


@dataclasses.dataclass(frozen=True)
class Result:
    logprob: float  # sum of log p(continuation token | everything before it)
    is_greedy: bool  # every continuation token is the argmax of its prediction
    truncated: bool  # tokens were dropped from the left of the context


@dataclasses.dataclass(frozen=True)
class _Placed:
    row: int
    start: int  # first input position of the request in its row
    length: int  # input positions it occupies (context + continuation - 1)
    continuation: int  # its last `continuation` positions predict the continuation


def _inputs_and_targets(request: Request, row_length: int
                        ) -> tuple[list[int], list[int], int, bool]:
    """(inputs, targets, scored positions, truncated): the last row_length + 1 tokens of
    context + continuation; a continuation longer than a row keeps its last row_length tokens
    (the harness's left truncation, applied to the whole request)."""
    whole = list(request.context_ids) + list(request.continuation_ids)
    if not request.continuation_ids or len(whole) < 2:
        raise ValueError("a request needs a continuation token and one token before it")
    truncated = len(whole) - 1 > row_length
    whole = whole[-(row_length + 1):]
    return whole[:-1], whole[1:], min(len(request.continuation_ids), len(whole) - 1), truncated


def first_fit(sizes: Sequence[tuple[int, ...]], capacity: tuple[int, ...]
              ) -> tuple[list[tuple[int, tuple[int, ...]]], int]:
    """Places items of `sizes` (tokens along each axis of a row: one axis, or encoder and
    decoder) into rows of `capacity`, largest first into the first row with room on every axis:
    ([(row, start per axis)] in the items' order, number of rows)."""
    order = sorted(range(len(sizes)), key=lambda i: -max(n / c for n, c in zip(sizes[i],
                                                                                capacity)))
    free: list[list[int]] = []  # room left per row and axis
    placed: list = [None] * len(sizes)
    for i in order:
        row = next((r for r, room in enumerate(free)
                    if all(f >= n for f, n in zip(room, sizes[i]))), None)
        if row is None:
            row = len(free)
            free.append(list(capacity))
        placed[i] = (row, tuple(c - f for c, f in zip(capacity, free[row])))
        free[row] = [f - n for f, n in zip(free[row], sizes[i])]
    return placed, len(free)


def pack(requests: Sequence[Request], row_length: int):
    """(rows, placements, truncated flags): rows is a dict of int32 [R, row_length] arrays
    `tokens`, `segment_ids`, `positions`, `targets`, `weights` (1 on the positions predicting
    the continuation) and `prefix` (1 on the context's tokens)."""
    prepared = [_inputs_and_targets(r, row_length) for r in requests]
    spans, count = first_fit([(len(inputs),) for inputs, _, _, _ in prepared], (row_length,))
    placed = [_Placed(row, start, len(inputs), scored)
              for (row, (start,)), (inputs, _, scored, _) in zip(spans, prepared)]
    rows = {k: np.zeros((count, row_length), np.int32)
            for k in ("tokens", "segment_ids", "positions", "targets", "weights", "prefix")}
    segment = np.zeros(count, np.int32)
    for i, p in enumerate(placed):
        inputs, targets, _, _ = prepared[i]
        segment[p.row] += 1
        span = slice(p.start, p.start + p.length)
        rows["tokens"][p.row, span] = inputs
        rows["targets"][p.row, span] = targets
        rows["segment_ids"][p.row, span] = segment[p.row]
        rows["positions"][p.row, span] = np.arange(p.length)
        rows["weights"][p.row, p.start + p.length - p.continuation:p.start + p.length] = 1
        # the context's tokens: a prefix-LM's bidirectional prefix (at least the first token)
        rows["prefix"][p.row, p.start:p.start + max(p.length - p.continuation + 1, 1)] = 1
    return rows, placed, [t for _, _, _, t in prepared]


def pack_encoder_decoder(requests: Sequence[Request], encoder_length: int, decoder_length: int,
                         start_id: int = 0):
    """`pack` for encoder-decoder models: the context goes to the encoder (its last
    encoder_length tokens), the continuation is the decoder's targets (its last decoder_length)
    after the start id, each request in the same row and segment of both. rows: `encoder_tokens`,
    `encoder_segment_ids`, `encoder_positions` [R, S]; `tokens` (decoder inputs),
    `segment_ids`, `positions`, `targets`, `weights` [R, T]; placements on the decoder axis."""
    prepared = []
    for r in requests:
        if not r.context_ids or not r.continuation_ids:
            raise ValueError("an encoder-decoder request needs context and continuation tokens")
        encoder, targets = list(r.context_ids)[-encoder_length:], list(r.continuation_ids)
        truncated = len(r.context_ids) > encoder_length or len(targets) > decoder_length
        prepared.append((encoder, targets[-decoder_length:], truncated))
    spans, count = first_fit([(len(e), len(t)) for e, t, _ in prepared],
                             (encoder_length, decoder_length))
    rows = {k: np.zeros((count, encoder_length), np.int32)
            for k in ("encoder_tokens", "encoder_segment_ids", "encoder_positions")}
    rows.update({k: np.zeros((count, decoder_length), np.int32)
                 for k in ("tokens", "segment_ids", "positions", "targets", "weights")})
    segment = np.zeros(count, np.int32)
    placed = []
    for (encoder, targets, _), (row, (e0, d0)) in zip(prepared, spans):
        segment[row] += 1
        s, t = len(encoder), len(targets)
        rows["encoder_tokens"][row, e0:e0 + s] = encoder
        rows["encoder_segment_ids"][row, e0:e0 + s] = segment[row]
        rows["encoder_positions"][row, e0:e0 + s] = np.arange(s)
        rows["tokens"][row, d0:d0 + t] = [start_id] + targets[:-1]
        rows["targets"][row, d0:d0 + t] = targets
        rows["segment_ids"][row, d0:d0 + t] = segment[row]
        rows["positions"][row, d0:d0 + t] = np.arange(t)
        rows["weights"][row, d0:d0 + t] = 1
        placed.append(_Placed(row, d0, t, t))
    return rows, placed, [cut for _, _, cut in prepared]


class TokenScorer:
    """(params, rows) -> (log p(target) [R, T], target is the argmax [R, T]) as numpy, from
    apply_logits(params, rows) -> logits [R, T, V'] (V' >= vocab_size: padded embedding rows
    are never predicted). Compiled once per row shape. With a mesh, the rows are sharded over
    its batch axes (R must be a multiple of `row_multiple`, their size) under the mesh's
    logical rules, and the results come back whole to every process."""

    def __init__(self, apply_logits: Callable, vocab_size: int, mesh=None):
        def score(params, rows):
            logits = apply_logits(params, rows).astype(jnp.float32)
            if logits.shape[-1] > vocab_size:
                logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, -jnp.inf)
            logp = jax.nn.log_softmax(logits, axis=-1)
            target_logp = jnp.take_along_axis(logp, rows["targets"][..., None], axis=-1)[..., 0]
            return target_logp, jnp.argmax(logits, axis=-1) == rows["targets"]

        self.mesh, self.row_multiple = mesh, 1
        if mesh is None:
            self._score = jax.jit(score)
            return
        from fmjax import mesh as mesh_lib
        self._rows_sharding = mesh_lib.batch_sharding(mesh)
        axes = self._rows_sharding.spec[0] if self._rows_sharding.spec else None
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        self.row_multiple = math.prod(mesh.shape[a] for a in axes)
        self._score = jax.jit(score, out_shardings=mesh_lib.replicated(mesh))
        self._activate = functools.partial(mesh_lib.activate, mesh)

    def __call__(self, params, rows: dict):
        if self.mesh is None:
            return self._score(params, rows)
        rows = {k: jax.make_array_from_callback(v.shape, self._rows_sharding,
                                                lambda index, v=v: v[index])
                for k, v in rows.items()}
        with self._activate():
            return self._score(params, rows)


def make_token_scorer(apply_logits: Callable, vocab_size: int, mesh=None) -> TokenScorer:
    return TokenScorer(apply_logits, vocab_size, mesh)


def score_rows(scorer, params, rows: dict, batch_rows: int,
               progress: Callable[[int, int], None] | None = None):
    """(log p(target), target is the argmax) over all `rows`, run `batch_rows` at a time
    (rounded up to the scorer's row_multiple; the last batch padded with empty rows, so one
    shape compiles); progress(rows_done, total)."""
    multiple = getattr(scorer, "row_multiple", 1)
    batch_rows = -(-batch_rows // multiple) * multiple
    total = len(rows["tokens"])
    pad = -total % batch_rows
    rows = {k: np.concatenate([v, np.zeros((pad, v.shape[1]), np.int32)])
            for k, v in rows.items()}
    logp, greedy = [], []
    for start in range(0, total + pad, batch_rows):
        lp, gr = scorer(params, {k: v[start:start + batch_rows] for k, v in rows.items()})
        logp.append(np.asarray(lp, np.float64))
        greedy.append(np.asarray(gr))
        if progress is not None:
            progress(min(start + batch_rows, total), total)
    return np.concatenate(logp)[:total], np.concatenate(greedy)[:total]


def bucket_lengths(row_length: int) -> list[int]:
    """The row lengths requests are sorted into, shortest first: row_length and its halves
    down to MIN_BUCKET (BUCKETS at most), so short requests do not pay for attention over
    the model's whole length."""
    lengths = [row_length // 2**k for k in range(BUCKETS)
               if row_length % 2**k == 0 and row_length // 2**k >= MIN_BUCKET]
    return sorted(lengths) or [row_length]


def _tokens_needed(request: Request, row_length: int, encoder_decoder: bool) -> int:
    if encoder_decoder:
        return max(min(len(request.context_ids), row_length),
                   min(len(request.continuation_ids), row_length))
    return min(len(request.context_ids) + len(request.continuation_ids) - 1, row_length)


def loglikelihoods(scorer, params, requests: Sequence[Request], *, row_length: int,
                   batch_rows: int, progress: Callable[[int, int], None] | None = None,
                   encoder_decoder: bool = False) -> list[Result]:
    """Results of `requests` in order; `scorer` from make_token_scorer. Each request goes to
    the shortest bucket of `bucket_lengths` that holds REQUESTS_PER_ROW requests of its
    length (else the longest); a bucket of length L runs
    batch_rows * row_length / L rows at a time (the same tokens per batch). `encoder_decoder`:
    contexts go to the encoder (pack_encoder_decoder), rows of L tokens on both sides.
    progress(rows_done, rows_total) counts rows of the longest bucket's length."""
    lengths = bucket_lengths(row_length)
    buckets: dict[int, list[int]] = {length: [] for length in lengths}
    for i, r in enumerate(requests):
        need = _tokens_needed(r, row_length, encoder_decoder)
        buckets[next(length for length in lengths
                     if need * REQUESTS_PER_ROW <= length or length == row_length)].append(i)
    packed = {}
    for length, members in buckets.items():
        if members:
            chosen = [requests[i] for i in members]
            packed[length] = (pack_encoder_decoder(chosen, length, length) if encoder_decoder
                              else pack(chosen, length))
    total = sum(len(rows["tokens"]) * length for length, (rows, _, _) in packed.items())
    done, out = 0, [None] * len(requests)
    for length, (rows, placed, truncated) in packed.items():
        def bucket_progress(rows_done, _, done=done, length=length):
            if progress is not None:
                progress((done + rows_done * length) // row_length, -(-total // row_length))
        logp, greedy = score_rows(scorer, params, rows, batch_rows * row_length // length,
                                  bucket_progress)
        done += len(rows["tokens"]) * length
        for i, p, cut in zip(buckets[length], placed, truncated):
            span = slice(p.start + p.length - p.continuation, p.start + p.length)
            out[i] = Result(float(logp[p.row, span].sum()), bool(greedy[p.row, span].all()),
                            cut)
    return out
