"""Pseudo-log-likelihood of continuations for masked language models (BERT; Salazar et al.,
2020): the context joined with the continuation, each continuation token masked in turn
(one copy of the sequence per masked token, the rest visible both ways), and the sum of
log p(that token | the copy) over the continuation. A sequence longer than a row loses tokens
from the left of its context, and is counted.

Speed: the copies are packed into rows of `row_length` tokens with segment ids (copies never
attend to one another), longest first, and scored by loglikelihood.make_token_scorer's
program: each copy's one weighted position is its masked token.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from fmjax.evals.loglikelihood import Request, Result, first_fit, score_rows


def pack(requests: Sequence[Request], row_length: int, mask_id: int):
    """(rows, placements, truncated): rows as loglikelihood.pack's, where position p of a copy
    has tokens[p] = mask_id, targets[p] = the true token and weights[p] = 1; placements name
    each request's copies, [(row, position)] per request."""
    copies, owners, truncated = [], [], []
    for i, r in enumerate(requests):
        if not r.continuation_ids:
            raise ValueError("a request needs a continuation token")
        whole = (list(r.context_ids) + list(r.continuation_ids))[-row_length:]
        n = min(len(r.continuation_ids), len(whole))
        truncated.append(len(r.context_ids) + len(r.continuation_ids) > row_length)
        for k in range(len(whole) - n, len(whole)):
            copies.append((whole, k))
            owners.append(i)
    where, count = first_fit([(len(whole),) for whole, _ in copies], (row_length,))
    rows = {k: np.zeros((count, row_length), np.int32)
            for k in ("tokens", "segment_ids", "positions", "targets", "weights")}
    segment = np.zeros(count, np.int32)
    placed: list[list[tuple[int, int]]] = [[] for _ in requests]
    for c, ((whole, k), (row, (start,))) in enumerate(zip(copies, where)):
        segment[row] += 1
        span = slice(start, start + len(whole))
        rows["tokens"][row, span] = whole
        rows["tokens"][row, start + k] = mask_id
        rows["targets"][row, start + k] = whole[k]
        rows["weights"][row, start + k] = 1
        rows["segment_ids"][row, span] = segment[row]
        rows["positions"][row, span] = np.arange(len(whole))
        placed[owners[c]].append((row, start + k))
    return rows, placed, truncated


def pseudo_loglikelihoods(scorer, params, requests: Sequence[Request], *, row_length: int,
                          batch_rows: int, mask_id: int, progress=None) -> list[Result]:
    """Results of `requests` in order (`is_greedy`: every masked token is the argmax)."""
    rows, placed, truncated = pack(requests, row_length, mask_id)
    logp, greedy = score_rows(scorer, params, rows, batch_rows, progress)
    return [Result(float(sum(logp[r, p] for r, p in spots)),
                   bool(all(greedy[r, p] for r, p in spots)), cut)
            for spots, cut in zip(placed, truncated)]

