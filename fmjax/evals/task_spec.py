"""What an evaluation task is: its examples, their splits and its prompt delimiters."""
from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Example:
    """One multiple-choice question, formatted as the task's lm-evaluation-harness config does."""
    context: str  # the prompt (the harness's doc_to_text)
    choices: tuple[str, ...]  # the answers, without the delimiter before them (doc_to_choice)
    gold: int  # index of the right answer


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    load: Callable[[str], list[Example]]  # split -> examples, in the dataset's order
    eval_split: str  # scored
    fewshot_split: str  # few-shot examples are drawn from here (never the scored split)
    target_delimiter: str = " "  # between the context and an answer
    fewshot_delimiter: str = "\n\n"  # between few-shot examples
