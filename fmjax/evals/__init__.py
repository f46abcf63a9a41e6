"""Zero- and few-shot evaluation tasks, registered by name, scored by lm-evaluation-harness's
definitions (fmjax/evals/multiple_choice.py, loglikelihood.py).

A new task is one file `fmjax/evals/NAME.py` calling `register(Task(name="NAME", ...))`; it is
imported on first use of its name, so there is no central list to edit. A user's own task
needs no code: `jsonl:PATH` names a JSONL file of {"context", "choices", "gold"} records
(fmjax/evals/jsonl.py).
"""
from __future__ import annotations

from fmjax.config import ConfigError
from fmjax.evals.task_spec import Example, Task
from fmjax.registry import Registry

__all__ = ["Example", "Task", "TASKS", "register", "get"]


TASKS: Registry[Task] = Registry("fmjax.evals", "eval.tasks", "eval task", ConfigError)


def register(task: Task) -> Task:
    return TASKS.register(task.name, task)


def get(name: str) -> Task:
    """The task called `name`; `jsonl:PATH` reads a user's JSONL file."""
    if name.startswith("jsonl:"):
        from fmjax.evals import jsonl
        return jsonl.task(name[len("jsonl:"):])
    return TASKS.get(name)
