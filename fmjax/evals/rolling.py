"""Rolling log-likelihood of whole texts, as lm-evaluation-harness scores `loglikelihood_rolling`
tasks (wikitext, pile): every token of the text is predicted exactly once.

Windows (the harness's get_rolling_token_windows with context_len=1, then make_disjoint_window):
the text's tokens t_0..t_{n-1} are cut into windows of at most max_seq_len predicted tokens. The
first window predicts t_0..t_{m-1} (m = min(max_seq_len, n)) from the prefix token alone (bos,
else eos); each later window predicts the next at most max_seq_len tokens, its context the
tokens just before them, as many as fill max_seq_len + 1 tokens in all. Each window is one
ordinary loglikelihood.Request (context, continuation), scored by the packed scorer; a text's
log-likelihood is the sum over its windows.

Metrics, aggregated over the corpus as the harness's weighted_perplexity and bits_per_byte do
(sums of log-likelihoods over sums of counts, not means of per-text ratios):
  word_perplexity = exp(-sum ll / sum words)   words = len(re.split(r"\\s+", text))
  byte_perplexity = exp(-sum ll / sum bytes)   bytes = len(text.encode("utf-8"))
  bits_per_byte   = -sum ll / sum bytes / ln 2
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Sequence

from fmjax.evals.loglikelihood import Request, Result
from fmjax.evals.task_spec import Passage


def windows(token_ids: Sequence[int], prefix_id: int, max_seq_len: int
            ) -> list[tuple[list[int], list[int]]]:
    """[(context ids, predicted ids)] covering `token_ids` in order, each token predicted once;
    context + predicted is at most max_seq_len + 1 tokens (the model sees max_seq_len)."""
    if max_seq_len < 1:
        raise ValueError(f"max_seq_len = {max_seq_len}; a window predicts at least one token")
    tokens = list(token_ids)
    if not tokens:
        return []
    first = min(max_seq_len, len(tokens))
    out = [([prefix_id], tokens[:first])]
    done = first
    while done < len(tokens):
        predict = min(len(tokens) - done, max_seq_len)
        end = done + predict
        # the harness's window tokens[end - max_seq_len - 1 : end - 1], made disjoint: its
        # first max_seq_len + 1 - predict tokens are the context
        out.append((tokens[end - max_seq_len - 1:done], tokens[done:end]))
        done = end
    return out


def requests(passages: Sequence[Passage], encode: Callable[[str], list[int]], prefix_id: int,
             max_seq_len: int) -> tuple[list[Request], list[int]]:
    """(the windows of every passage as Requests, the passage index of each request)."""
    out, owner = [], []
    for i, passage in enumerate(passages):
        for context, predicted in windows(encode(passage.text), prefix_id, max_seq_len):
            out.append(Request(tuple(context), tuple(predicted)))
            owner.append(i)
    return out, owner


def word_count(text: str) -> int:
    return len(re.split(r"\s+", text))


def byte_count(text: str) -> int:
    return len(text.encode("utf-8"))


def word_perplexity(loglikelihoods: Sequence[float], words: Sequence[int]) -> float:
    return math.exp(-sum(loglikelihoods) / sum(words))


def byte_perplexity(loglikelihoods: Sequence[float], byte_counts: Sequence[int]) -> float:
    return math.exp(-sum(loglikelihoods) / sum(byte_counts))


def bits_per_byte(loglikelihoods: Sequence[float], byte_counts: Sequence[int]) -> float:
    return -sum(loglikelihoods) / sum(byte_counts) / math.log(2)


@dataclasses.dataclass(frozen=True)
class Scores:
    word_perplexity: float
    byte_perplexity: float
    bits_per_byte: float
    loglikelihood: float  # summed over the corpus
    words: int
    bytes: int
    n: int  # passages
    truncated: int  # windows that lost tokens (an encoder-decoder's encoder side only)

    def metrics(self) -> dict[str, tuple[float, float | None]]:
        """{metric: (value, None)}: the harness reports no standard error for these."""
        return {"word_perplexity": (self.word_perplexity, None),
                "byte_perplexity": (self.byte_perplexity, None),
                "bits_per_byte": (self.bits_per_byte, None)}


def score(passages: Sequence[Passage], results: Sequence[Result], owner: Sequence[int]
          ) -> Scores:
    """The corpus metrics from each window's result (`owner` from `requests`)."""
    lls = [0.0] * len(passages)
    for result, i in zip(results, owner, strict=True):
        lls[i] += result.logprob
    words = [word_count(p.text) for p in passages]
    counts = [byte_count(p.text) for p in passages]
    return Scores(word_perplexity(lls, words), byte_perplexity(lls, counts),
                  bits_per_byte(lls, counts), sum(lls), sum(words), sum(counts), len(passages),
                  sum(r.truncated for r in results))
