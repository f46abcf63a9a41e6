"""A user's own multiple-choice task, with no code: a JSONL file whose records are
{"context": str, "choices": [str, ...], "gold": int}. Few-shot examples come from the same file
(never the example being scored: `fmjax/evals/multiple_choice.py` draws them without it)."""
from __future__ import annotations

import functools
import json
import os

from fmjax.config import ConfigError
from fmjax.evals.task_spec import Example, Task


def read_examples(path: str) -> list[Example]:
    if not os.path.isfile(path):
        raise ConfigError(f"eval task 'jsonl:{path}': no such file; give a JSONL file of "
                          '{"context", "choices", "gold"} records')
    examples = []
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            missing = {"context", "choices", "gold"} - set(record)
            choices = record.get("choices", [])
            if missing or not 0 <= int(record.get("gold", -1)) < len(choices):
                raise ConfigError(f"{path}:{line_number}: a record needs 'context', 'choices' and "
                                  f"a 'gold' index into the choices (missing {sorted(missing)})")
            examples.append(Example(record["context"], tuple(choices), int(record["gold"])))
    return examples


def task(path: str) -> Task:
    load = functools.cache(lambda split: read_examples(path))
    return Task(name=f"jsonl:{path}", load=load, eval_split="all", fewshot_split="all")
