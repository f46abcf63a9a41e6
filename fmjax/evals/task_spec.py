"""What an evaluation task is: its examples, their splits, its prompt delimiters and its output
type (lm-evaluation-harness's `output_type`), which decides how it is scored:
  multiple_choice        Example   log-likelihood of each answer (fmjax/evals/multiple_choice.py)
  loglikelihood_rolling  Passage   log-likelihood of the whole text (fmjax/evals/rolling.py)
  generate_until         Question  greedy generation, exact match (fmjax/evals/generative.py)
"""
from __future__ import annotations

import dataclasses
from typing import Callable

OUTPUT_TYPES = ("multiple_choice", "loglikelihood_rolling", "generate_until")


@dataclasses.dataclass(frozen=True)
class Example:
    """One multiple-choice question, formatted as the task's lm-evaluation-harness config does."""
    context: str  # the prompt (the harness's doc_to_text)
    choices: tuple[str, ...]  # the answers, without the delimiter before them (doc_to_choice)
    gold: int  # index of the right answer

    @property
    def target(self) -> str:
        """What a few-shot copy of this example shows after its context."""
        return self.choices[self.gold]


@dataclasses.dataclass(frozen=True)
class Passage:
    """One text scored whole by its rolling log-likelihood (the harness's doc_to_target)."""
    text: str


@dataclasses.dataclass(frozen=True)
class Question:
    """One prompt answered by greedy generation; right when it matches any of `answers`."""
    context: str  # the prompt (doc_to_text)
    answers: tuple[str, ...]  # every accepted answer (doc_to_target, a multiple target)

    @property
    def target(self) -> str:
        """A few-shot copy shows the first answer, as the harness does for multiple targets."""
        return self.answers[0]


@dataclasses.dataclass(frozen=True)
class Generation:
    """A generate_until task's generation_kwargs and exact_match options (its harness yaml)."""
    until: tuple[str, ...] = ("\n",)  # the text is cut before the first of these (and eos)
    max_gen_toks: int = 256  # the harness's default for Hugging Face models
    ignore_case: bool = False
    ignore_punctuation: bool = False  # string.punctuation removed from both sides
    regexes_to_ignore: tuple[str, ...] = ()  # re.sub(r, "", .) on both sides, before the rest


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    load: Callable[[str], list]  # split -> Examples / Passages / Questions, in dataset order
    eval_split: str  # scored
    fewshot_split: str  # few-shot examples are drawn from here (never the scored example)
    target_delimiter: str = " "  # between the context and an answer
    fewshot_delimiter: str = "\n\n"  # between few-shot examples
    output_type: str = "multiple_choice"  # one of OUTPUT_TYPES
    description: str = ""  # text before the first few-shot example (the harness's description)
    generation: Generation = Generation()  # generate_until tasks only
    # the same benchmark in the TFDS catalog (NAME[/CONFIG]), whose rows have the fields of the
    # shipped copy: `tfds:NAME` reads it through TFDS instead (fmjax/evals/tfds_rows.py)
    tfds_name: str = ""
    from_rows: Callable[[list[dict]], list] | None = None  # rows -> examples (load's second half)

    def __post_init__(self):
        if self.output_type not in OUTPUT_TYPES:
            raise ValueError(f"eval task {self.name}: output_type = {self.output_type!r}; use "
                             f"one of {', '.join(OUTPUT_TYPES)}")
