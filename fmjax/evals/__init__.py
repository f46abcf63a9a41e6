"""Zero- and few-shot evaluation tasks, registered by name, scored by lm-evaluation-harness's
definitions by their output type: multiple choice (fmjax/evals/multiple_choice.py), rolling
log-likelihood (rolling.py), greedy generation with exact match (generative.py).

A new task is one file `fmjax/evals/NAME.py` calling `register(Task(name="NAME", ...))`; it is
imported on first use of its name, so there is no central list to edit. A user's own task
needs no code: `jsonl:PATH` names a JSONL file of {"context", "choices", "gold"} records
(multiple choice), {"text"} records (rolling log-likelihood) or {"context", "answers"} records
(generation until a newline, exact match) (fmjax/evals/jsonl.py).
"""
from __future__ import annotations

from fmjax.config import ConfigError
from fmjax.evals.task_spec import Example, Generation, Passage, Question, Task
from fmjax.registry import Registry

__all__ = ["Example", "Generation", "Passage", "Question", "Task", "TASKS", "register", "get"]


TASKS: Registry[Task] = Registry("fmjax.evals", "eval.tasks", "eval task", ConfigError)


def register(task: Task) -> Task:
    return TASKS.register(task.name, task)


def get(name: str) -> Task:
    """The task called `name`; `jsonl:PATH` reads a user's JSONL file; `tfds:NAME` is task NAME
    on its TFDS copy (fmjax/evals/tfds_rows.py)."""
    if name.startswith("jsonl:"):
        from fmjax.evals import jsonl
        return jsonl.task(name[len("jsonl:"):])
    if name.startswith("tfds:"):
        from fmjax.evals import tfds_rows
        return tfds_rows.task(TASKS.get(name[len("tfds:"):]))
    return TASKS.get(name)
