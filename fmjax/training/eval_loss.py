"""Validation loss of a language-modelling run: the weighted cross-entropy of the objective
over fixed validation batches, the metric pretraining and LM fine-tuning report."""
from __future__ import annotations

import math

from fmjax.data import pipeline
from fmjax.training import loop


def evaluate(engine, params, eval_batches, abandon=lambda: False) -> dict:
    ce, w = 0.0, 0.0
    for local in eval_batches:
        if abandon():
            raise loop.EvalAbandoned()
        sums = engine.run_eval_step(params, pipeline.global_batch(local, engine.batch_sharding))
        ce += float(sums["ce_sum"])
        w += float(sums["weight_sum"])
    loss = ce / max(w, 1.0)
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}
