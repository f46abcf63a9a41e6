"""COPA (Roemmele et al., 2011; SuperGLUE), lm-evaluation-harness's `copa` format: the premise
without its final period, then " because" (cause) or " therefore" (effect); each alternative
with its first letter lower-cased. Validation split; few-shot examples from it."""
from fmjax import evals
from fmjax.evals import olmo_data

CONNECTOR = {"cause": "because", "effect": "therefore"}


def _lower_first(text: str) -> str:
    return text[0].lower() + text[1:]


def load(split: str) -> list[evals.Example]:
    return [evals.Example(row["premise"].strip()[:-1] + f" {CONNECTOR[row['question']]}",
                          (_lower_first(row["choice1"]), _lower_first(row["choice2"])),
                          row["label"]) for row in olmo_data.read("super_glue/copa", split)]


evals.register(evals.Task("copa", load=load, eval_split="validation",
                          fewshot_split="validation"))
