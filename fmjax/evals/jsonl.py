"""A user's own task, with no code: a JSONL file whose records say what kind of task it is.
  {"context": str, "choices": [str, ...], "gold": int}  multiple choice (acc, acc_norm)
  {"text": str}                                         rolling log-likelihood (word_perplexity,
                                                        byte_perplexity, bits_per_byte)
  {"context": str, "answers": [str, ...]}               generation until a newline, scored by
                                                        exact match (after stripping) with any
                                                        answer
The first record decides the kind; every record must be of it. Few-shot examples come from the
same file (never the example being scored)."""
from __future__ import annotations

import functools
import json
import os

from fmjax.config import ConfigError
from fmjax.evals.task_spec import Example, Passage, Question, Task


def _example(record: dict) -> Example:
    choices = record.get("choices", [])
    if not isinstance(record.get("gold"), int) or not 0 <= record["gold"] < len(choices):
        raise ValueError("a 'gold' index into the choices")
    return Example(record["context"], tuple(choices), record["gold"])


def _passage(record: dict) -> Passage:
    if not isinstance(record["text"], str):
        raise ValueError("'text' as a string")
    return Passage(record["text"])


def _question(record: dict) -> Question:
    answers = record["answers"]
    if isinstance(answers, str):
        answers = [answers]
    if not answers or not all(isinstance(a, str) for a in answers):
        raise ValueError("'answers' as a non-empty list of strings")
    return Question(record["context"], tuple(answers))


# fields that make a record of the kind -> (output type, record -> example)
KINDS = {
    frozenset({"context", "choices", "gold"}): ("multiple_choice", _example),
    frozenset({"text"}): ("loglikelihood_rolling", _passage),
    frozenset({"context", "answers"}): ("generate_until", _question),
}
FORMATS = ('{"context", "choices", "gold"} (multiple choice), {"text"} (rolling '
           'log-likelihood) or {"context", "answers"} (generation, exact match)')


def _kind(record: dict):
    found = [fields for fields in KINDS if fields <= set(record)]
    return KINDS[max(found, key=len)] if found else None


def read(path: str) -> tuple[str, list]:
    """(output type, examples) of the file."""
    if not os.path.isfile(path):
        raise ConfigError(f"eval task 'jsonl:{path}': no such file; give a JSONL file of "
                          f"{FORMATS} records")
    kind, examples = None, []
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            found = _kind(record)
            if found is None or (kind is not None and found != kind):
                raise ConfigError(f"{path}:{line_number}: a record of "
                                  f"{sorted(record)}; every record needs the fields of one "
                                  f"kind: {FORMATS}" + (f" (this file is {kind[0]})"
                                                        if kind else ""))
            kind = found
            try:
                examples.append(kind[1](record))
            except ValueError as e:
                raise ConfigError(f"{path}:{line_number}: a record needs {e}") from None
    if kind is None:
        raise ConfigError(f"{path}: no records; give {FORMATS} records")
    return kind[0], examples


def read_examples(path: str) -> list:
    return read(path)[1]


def task(path: str) -> Task:
    """The file's task, read once per version of the file (its size and modification time)."""
    stat = os.stat(path) if os.path.isfile(path) else None
    return _task(path, stat and (stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=64)
def _task(path: str, version) -> Task:
    output_type, examples = read(path)
    return Task(name=f"jsonl:{path}", load=lambda split: examples, eval_split="all",
                fewshot_split="all", output_type=output_type)
