"""lm-evaluation-harness's multiple-choice definitions: acc is the argmax of the summed
log-probabilities, acc_norm the argmax after dividing by each answer's length in characters;
the context/continuation token split; few-shot contexts drawn with a seed, never the example
itself; a user's JSONL task."""
import json

import numpy as np
import pytest

from fmjax import evals
from fmjax.config import ConfigError
from fmjax.evals import Example, Task, multiple_choice
from fmjax.evals.loglikelihood import Result


def results(*logprobs):
    return [Result(lp, False, False) for lp in logprobs]


def test_acc_and_acc_norm_follow_the_definitions():
    examples = [Example("q1", ("a", "bbbbbb"), 1),  # sums -1 vs -2: acc picks a (wrong);
                Example("q2", ("aa", "b"), 0)]      # per char -0.5 vs -0.33: norm picks bbbbbb
    scores = multiple_choice.score(examples, results(-1.0, -2.0, -1.0, -0.9))
    # example 2: sums -1.0 vs -0.9 -> acc picks b (wrong); per char -0.5 vs -0.9 -> aa (right)
    assert scores.acc == 0.0 and scores.acc_norm == 1.0 and scores.n == 2
    one_of_two = multiple_choice.score(examples, results(-1.0, -2.0, -0.5, -0.9))
    assert one_of_two.acc == 0.5
    assert one_of_two.acc_stderr == pytest.approx(np.std([0, 1], ddof=1) / np.sqrt(2))


def test_trailing_whitespace_moves_to_the_continuation():
    encode = lambda text: [ord(c) for c in text]  # noqa: E731  (one id per character)
    context, continuation = multiple_choice.encode_pair(encode, "Question: x\nAnswer: ", "yes")
    assert bytes(context).decode() == "Question: x\nAnswer:"
    assert bytes(continuation).decode() == " yes"


def test_fewshot_contexts_are_seeded_and_never_the_scored_example():
    pool = [Example(f"Q{i}", ("no", "yes"), i % 2) for i in range(6)]
    task = Task("toy", load=lambda split: pool, eval_split="all", fewshot_split="all")
    a = multiple_choice.fewshot_contexts(task, pool, 2, seed=1)
    assert a == multiple_choice.fewshot_contexts(task, pool, 2, seed=1)
    assert a != multiple_choice.fewshot_contexts(task, pool, 2, seed=2)
    for ex, context in zip(pool, a):
        shots = context.split("\n\n")
        assert len(shots) == 3 and shots[-1] == ex.context
        assert all(s.split(" ")[0] != ex.context for s in shots[:-1])
        assert all(s in {f"{p.context} {p.choices[p.gold]}" for p in pool} for s in shots[:-1])


def test_jsonl_task_and_unknown_names(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"context": "2 + 2 =", "choices": ["4", "5"], "gold": 0},
        {"context": "3 + 3 =", "choices": ["5", "6"], "gold": 1}]))
    task = evals.get(f"jsonl:{path}")
    assert task.load(task.eval_split)[1] == Example("3 + 3 =", ("5", "6"), 1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "x", "choices": ["a"], "gold": 3}))
    with pytest.raises(ConfigError, match="bad.jsonl:1: a record needs"):
        evals.get(f"jsonl:{bad}").load("all")
    with pytest.raises(ConfigError, match="no such eval task"):
        evals.get("arc_easyy")
