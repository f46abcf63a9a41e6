"""ARC-Challenge (Clark et al., 2018), in the same format as ARC-Easy (fmjax/evals/arc_easy.py)."""
from fmjax import evals
from fmjax.evals.arc_easy import arc_examples

evals.register(evals.Task("arc_challenge", load=arc_examples("ai2_arc/ARC-Challenge"),
                          eval_split="validation", fewshot_split="validation"))
