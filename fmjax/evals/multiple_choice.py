"""Multiple choice by log-likelihood, as lm-evaluation-harness defines it.

For each example the context (with K few-shot examples before it) is joined with each answer;
the score of an answer is the sum of the log-probabilities of its tokens only.
  acc      = mean over examples of [argmax_i score_i == gold]
  acc_norm = mean over examples of [argmax_i score_i / len(answer_i in characters) == gold]
with the standard error of each mean (sample standard deviation / sqrt(n)). Few-shot examples
are drawn with `random.Random(seed)` from the task's few-shot split (never the example being
scored), each written as context + target delimiter + its right answer, joined by the
few-shot delimiter (a blank line), after the task's description. Generative tasks draw theirs
the same way (`fewshot_contexts` takes any example with a `context` and a `target`).
"""
from __future__ import annotations

import dataclasses
import math
import random
from typing import Callable, Sequence

import numpy as np

from fmjax.evals import Example, Task
from fmjax.evals.loglikelihood import Request, Result


def fewshot_contexts(task: Task, examples: Sequence, num_fewshot: int, seed: int) -> list[str]:
    """Each example's full context: the task's description, num_fewshot solved examples (their
    context + target delimiter + target), then its own context."""
    if num_fewshot == 0:
        return [task.description + ex.context for ex in examples]
    pool = task.load(task.fewshot_split)
    same_split = task.fewshot_split == task.eval_split
    if len(pool) < num_fewshot + same_split:
        raise ValueError(f"eval task {task.name}: {len(pool)} few-shot examples in split "
                         f"{task.fewshot_split!r}, {num_fewshot} asked for")
    rng = random.Random(seed)
    out = []
    for ex in examples:
        shots = rng.sample(pool, num_fewshot + same_split)
        shots = [s for s in shots if s != ex][:num_fewshot]
        prefix = "".join(s.context + task.target_delimiter + s.target + task.fewshot_delimiter
                         for s in shots)
        out.append(task.description + prefix + ex.context)
    return out


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str
                ) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as the harness splits them: trailing whitespace of the
    context moves to the continuation, and the continuation's ids are what encoding the joined
    text adds after the context's ids."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = encode(context + continuation)
    context_ids = encode(context)
    return context_ids, whole[len(context_ids):]


def requests(task: Task, contexts: Sequence[str], examples: Sequence[Example],
             encode: Callable[[str], list[int]], prefix_ids: Sequence[int] = ()) -> list[Request]:
    """One request per (example, answer), in order; `prefix_ids` (e.g. bos) start every context."""
    out = []
    for context, ex in zip(contexts, examples):
        for choice in ex.choices:
            context_ids, continuation_ids = encode_pair(encode, context,
                                                        task.target_delimiter + choice)
            out.append(Request(tuple(prefix_ids) + tuple(context_ids), tuple(continuation_ids)))
    return out


@dataclasses.dataclass(frozen=True)
class Scores:
    acc: float
    acc_stderr: float
    acc_norm: float
    acc_norm_stderr: float
    n: int  # examples
    truncated: int  # requests whose context lost tokens from the left

    def metrics(self) -> dict[str, tuple[float, float | None]]:
        """{metric: (value, standard error)}, as every kind's Scores reports them."""
        return {"acc": (self.acc, self.acc_stderr), "acc_norm": (self.acc_norm,
                                                                 self.acc_norm_stderr)}


def _mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    n = len(values)
    return float(values.mean()), (float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0)


def score(examples: Sequence[Example], results: Sequence[Result]) -> Scores:
    """acc and acc_norm of `examples` from their requests' results (in `requests` order)."""
    correct, correct_norm, i = [], [], 0
    for ex in examples:
        lls = np.array([r.logprob for r in results[i:i + len(ex.choices)]])
        lengths = np.array([float(len(c)) for c in ex.choices])
        i += len(ex.choices)
        correct.append(float(np.argmax(lls) == ex.gold))
        correct_norm.append(float(np.argmax(lls / lengths) == ex.gold))
    acc, acc_se = _mean_and_stderr(np.array(correct))
    norm, norm_se = _mean_and_stderr(np.array(correct_norm))
    return Scores(acc, acc_se, norm, norm_se, len(examples), sum(r.truncated for r in results))
