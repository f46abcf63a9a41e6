"""The embedded next-line task: every example comes from files the pretraining split holds out
(checked against the stdlib TFDS dataset's own train split), the scored and few-shot examples
share no file, each example is the true next line among 4 lines of other held-out functions,
and the examples are the same in every process."""
import collections
import hashlib
import os
import random
import subprocess
import sys
import sysconfig

import pytest

from fmjax import evals
from fmjax.config import base_config
from fmjax.data import hash_split, stdlib_corpus
from fmjax.data.stdlib_functions import function_sources
from fmjax.data.text_files import read_text
from fmjax.data.text_source import as_text
from fmjax.evals import multiple_choice, stdlib_next_line as task_lib
from tests.helpers import ROOT

STDLIB = sysconfig.get_paths()["stdlib"]


def files_of(split):
    return {key.rsplit(":", 1)[0] for key, _, _ in task_lib.candidates(split, STDLIB)}


def test_examples_come_only_from_files_pretraining_holds_out(data_dir):
    config = base_config()
    config.data.tfds_data_dir = data_dir
    assert config.data.validation_percent == task_lib.HELD_OUT_PERCENT
    train = stdlib_corpus.open_stdlib(config, "train").records
    trained_on = {as_text(record["path"]) for record in train}
    held_out = {as_text(record["path"])
                for record in stdlib_corpus.open_stdlib(config, "validation").records}
    used = files_of("test") | files_of("fewshot")
    assert len(trained_on) > 1000 and len(used) > 20
    assert not used & trained_on
    assert used <= held_out
    for percent in (5, 10, 20, 50):  # held out at every larger validation percent too
        assert all(hash_split.split_for_key(p, percent) == hash_split.VALIDATION for p in used)
    # nor does a training file hold an example's code (boilerplate copied between files)
    train_lines = "\n" + "\n".join(line.strip() for record in train
                                   for line in as_text(record["text"]).splitlines()) + "\n"
    for split in task_lib.SPLITS:
        for _, context, line in task_lib.candidates(split, STDLIB):
            snippet = "\n".join(line.strip() for line in (context + line).splitlines())
            assert f"\n{snippet}\n" not in train_lines, snippet


def test_scored_and_fewshot_examples_share_no_file():
    task = evals.get("stdlib_next_line")
    assert (task.eval_split, task.fewshot_split) == ("test", "fewshot")
    assert files_of("test") and files_of("fewshot")
    assert not files_of("test") & files_of("fewshot")
    scored, pool = task.load("test"), task.load("fewshot")
    assert len(scored) >= 300 and len(pool) >= 100  # the main job scores 200, with 3 shots
    assert not ({ex.context + ex.choices[ex.gold] for ex in scored}
                & {ex.context + ex.choices[ex.gold] for ex in pool})
    # a 3-shot context is 3 solved few-shot examples, then the scored one
    contexts = multiple_choice.fewshot_contexts(task, scored[:20], 3, seed=1234)
    solved = {ex.context + ex.choices[ex.gold] for ex in pool}
    for ex, context in zip(scored[:20], contexts):
        assert context.endswith(ex.context)
        prefix = context[:-len(ex.context)]
        for _ in range(3):  # shots hold blank lines themselves: peel off whole solved ones
            shot = next(s for s in solved if prefix.startswith(s + "\n\n"))
            prefix = prefix[len(shot) + 2:]
        assert prefix == ""


def test_four_choices_the_true_next_line_at_four_depths():
    examples = evals.get("stdlib_next_line").load("test")
    found = task_lib.candidates("test", STDLIB)
    assert len(examples) == len(found)
    for ex, (key, context, line) in zip(examples, found):
        assert len(ex.choices) == 4 and len(set(ex.choices)) == 4 and 0 <= ex.gold < 4
        shift = " " * (len(ex.context) - len(ex.context.lstrip(" ")))  # the def line's indent
        # context + the gold answer = the function up to its line, all indented by `shift`
        assert (ex.context + ex.choices[ex.gold]).splitlines() == [
            shift + row if row.strip() else row for row in (context + line).splitlines()]
        last_rows = [choice.splitlines()[-1] for choice in ex.choices]
        assert {row.lstrip(" ") for row in last_rows} == {line.lstrip(" ")}  # the same code
        depths = [(len(row) - len(row.lstrip(" "))) // 4 for row in last_rows]
        assert depths == list(range(depths[0], depths[0] + 4))  # consecutive depths
        assert len({choice.splitlines()[0] for choice in ex.choices}) == 1  # a shared tail
    # the line is a statement of the function, `context` the function before it
    key, context, line = found[0]
    path, line_number = key.rsplit(":", 1)
    text, _ = read_text(os.path.join(STDLIB, path))
    source = dict(function_sources(text))[int(line_number)]
    assert source.startswith(context + line + "\n")
    # the right depth is at every position, and no one depth is right most of the time
    positions = collections.Counter(ex.gold for ex in examples)
    assert sorted(positions) == [0, 1, 2, 3] and min(positions.values()) > len(examples) / 8
    gold_rows = [ex.choices[ex.gold].splitlines()[-1] for ex in examples]
    gold_depths = collections.Counter(len(row) - len(row.lstrip(" ")) for row in gold_rows)
    assert max(gold_depths.values()) < 0.4 * len(examples), gold_depths


def test_the_drawn_line_is_a_statement_with_room_before_it():
    rng = random.Random(0)
    assert task_lib.context_and_line("def f(a):\n    total = a + 1\n", rng) == (
        "def f(a):\n", "    total = a + 1")
    assert task_lib.context_and_line("def f(a):\n    pass\n", rng) is None  # too short
    assert task_lib.context_and_line("def f(a):\n    # the sum\n    pass\n", rng) is None
    long_doc = 'def f(a):\n    """' + "x" * 500 + '"""\n    x_value = a + 1\n'
    assert task_lib.context_and_line(long_doc, rng) is None  # only the docstring is short
    nested = "def f(a):\n    if a > 0:\n        return a + 1\n"
    assert {task_lib.context_and_line(nested, random.Random(seed)) for seed in range(20)} == {
        ("def f(a):\n", "    if a > 0:"), ("def f(a):\n    if a > 0:\n", "        return a + 1")}


def test_the_answers_carry_the_line_break():
    # the harness moves a context's trailing newline into the answers and loses it where a
    # token spans it; the cut is before the last line's punctuation or word instead
    assert task_lib.shared_tail("def f(a, b):\n") == len("def f(a, b")
    assert task_lib.shared_tail("    x = 1\n") == len("    x = ")
    example = task_lib.example("x.py:1", "def f(a):\n    if a:\n", "        return a")
    assert not example.context[-1:].isspace()
    assert all(choice.startswith(":\n") for choice in example.choices)


DIGEST = ("import hashlib; from fmjax import evals; t = evals.get('stdlib_next_line'); "
          "print(hashlib.sha1(repr([t.load('test'), t.load('fewshot')]).encode()).hexdigest())")


def test_examples_are_the_same_in_every_process():
    task = evals.get("stdlib_next_line")
    here = hashlib.sha1(repr([task.load("test"), task.load("fewshot")]).encode()).hexdigest()
    task_lib.load_examples.cache_clear()
    task_lib.all_candidates.cache_clear()
    assert hashlib.sha1(repr([task.load("test"), task.load("fewshot")]).encode()
                        ).hexdigest() == here
    env = dict(os.environ, PYTHONHASHSEED="12345")  # no set or hash order leaks in
    out = subprocess.run([sys.executable, "-c", DIGEST], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == here


def test_unknown_split_is_named():
    with pytest.raises(ValueError, match="no split 'train'"):
        task_lib.load_examples("train")
