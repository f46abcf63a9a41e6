"""Generative tasks (`generate_until`) scored by exact match, as lm-evaluation-harness does.

The prompt is the task's description + few-shot examples + the question's context (built like
multiple choice's, fmjax/evals/multiple_choice.py). The model continues it greedily for at most
max_gen_toks tokens (fmjax/evals/generative_decoding.py); the text is cut before the first
occurrence of any `until` string (the harness's postprocess_generated_text; end-of-document
ends it too), then the `remove_whitespace` filter strips it. exact_match (the harness's
exact_match_hf_evaluate, per task options): on both the prediction and each answer, each of
`regexes_to_ignore` is removed, then with ignore_case both are lower-cased, with
ignore_punctuation every character of string.punctuation is removed; the question counts 1
when the prediction equals any answer. Reported: the mean and its standard error.
"""
from __future__ import annotations

import dataclasses
import re
import string
from typing import Sequence

import numpy as np

from fmjax.evals.task_spec import Generation, Question

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """`text` before the first occurrence of any non-empty string of `until`."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


def normalize(text: str, generation: Generation) -> str:
    for pattern in generation.regexes_to_ignore:
        text = re.sub(pattern, "", text)
    if generation.ignore_case:
        text = text.lower()
    if generation.ignore_punctuation:
        text = text.translate(_PUNCTUATION)
    return text


def exact_match(prediction: str, answers: Sequence[str], generation: Generation) -> float:
    """1.0 when the normalized prediction equals any normalized answer, else 0.0."""
    predicted = normalize(prediction, generation)
    return float(any(predicted == normalize(a, generation) for a in answers))


def answer(generated: str, generation: Generation) -> str:
    """A generated continuation as the harness scores it: cut at `until`, stripped."""
    return cut_at_stop(generated, generation.until).strip()


@dataclasses.dataclass(frozen=True)
class Scores:
    exact_match: float
    exact_match_stderr: float
    n: int  # questions
    truncated: int  # prompts that lost tokens from the left
    predictions: tuple[str, ...]  # each question's answer, as scored

    def metrics(self) -> dict[str, tuple[float, float | None]]:
        return {"exact_match": (self.exact_match, self.exact_match_stderr)}


def score(questions: Sequence[Question], generated: Sequence[str], generation: Generation,
          truncated: int = 0) -> Scores:
    """exact_match of each question's generated continuation (uncut) and its mean."""
    predictions = [answer(g, generation) for g in generated]
    hits = np.array([exact_match(p, q.answers, generation)
                     for p, q in zip(predictions, questions, strict=True)])
    n = len(hits)
    stderr = float(hits.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    return Scores(float(hits.mean()) if n else 0.0, stderr, n, truncated, tuple(predictions))
