"""Log-likelihood of continuations given contexts for decoder models, by lm-evaluation-harness's
definition: the context's tokens joined with the continuation's, and the sum of the
log-probabilities of the continuation's tokens only (plus whether greedy decoding would have
produced exactly them). A request longer than the model's rows loses tokens from the left of
its context, as the harness truncates, and is counted.

Speed: requests are packed into rows of `row_length` tokens with segment ids (a request never
attends to another), longest first into the first row with room, and rows run in batches of a
fixed shape, so one program is compiled however many requests there are.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


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


def make_token_scorer(apply_logits: Callable, vocab_size: int):
    """jitted (params, rows) -> (log p(target) [R, T], target is the argmax [R, T]);
    apply_logits(params, rows) -> logits [R, T, V'] (V' >= vocab_size: padded embedding rows
    are never predicted)."""
    def score(params, rows):
        logits = apply_logits(params, rows)
        logits = logits.astype(jnp.float32)
        if logits.shape[-1] > vocab_size:
            logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, -jnp.inf)
        logp = jax.nn.log_softmax(logits, axis=-1)
        target_logp = jnp.take_along_axis(logp, rows["targets"][..., None], axis=-1)[..., 0]
        return target_logp, jnp.argmax(logits, axis=-1) == rows["targets"]
    return jax.jit(score)


def score_rows(scorer, params, rows: dict, batch_rows: int,
               progress: Callable[[int, int], None] | None = None):
    """(log p(target), target is the argmax) over all `rows`, run `batch_rows` at a time (the
    last batch padded with empty rows, so one shape compiles); progress(rows_done, total)."""
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
    return np.concatenate(logp), np.concatenate(greedy)


def loglikelihoods(scorer, params, requests: Sequence[Request], *, row_length: int,
                   batch_rows: int, progress: Callable[[int, int], None] | None = None,
                   encoder_decoder: bool = False) -> list[Result]:
    """Results of `requests` in order; `scorer` from make_token_scorer. Rows run `batch_rows`
    at a time (the last batch padded with empty rows); progress(rows_done, rows_total).
    `encoder_decoder`: contexts go to the encoder (pack_encoder_decoder), rows of row_length
    tokens on both sides."""
    if encoder_decoder:
        rows, placed, truncated = pack_encoder_decoder(requests, row_length, row_length)
    else:
        rows, placed, truncated = pack(requests, row_length)
    logp, greedy = score_rows(scorer, params, rows, batch_rows, progress)
    out = []
    for p, cut in zip(placed, truncated):
        span = slice(p.start + p.length - p.continuation, p.start + p.length)
        out.append(Result(float(logp[p.row, span].sum()), bool(greedy[p.row, span].all()), cut))
    return out
