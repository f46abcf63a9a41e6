"""ARC-Challenge (Clark et al., 2018), in the same format as ARC-Easy (fmjax/evals/arc_easy.py)."""
from fmjax import evals
from fmjax.evals.arc_easy import arc_task

evals.register(arc_task("arc_challenge", "ai2_arc/ARC-Challenge"))
