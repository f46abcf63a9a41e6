"""Causal-LM fine-tuning: the pretrained decoder itself, next-token loss. On a text source
(stdlib, local_text, TFDS) the batches are packed exactly as in pretraining, so the validation
loss at fine-tune step 0 equals the pretraining run's; on `prompt_completion` .jsonl records
the prompt tokens carry no loss (`loss_mask`, fmjax/data/prompt_completion.py)."""
from __future__ import annotations

from fmjax import models, objectives, tasks
from fmjax.training import eval_loss
from fmjax.data import pipeline

PROMPT_COMPLETION = "prompt_completion"


@tasks.register("lm")
def make(config, tokenizer) -> tasks.Task:
    model, model_config = models.build(config)
    if config.data.source == PROMPT_COMPLETION:
        from fmjax.data import prompt_completion as data
        train_iter = data.make_prompt_completion_train_iterator(config, tokenizer)
        eval_batches = data.make_prompt_completion_eval_batches(config, tokenizer)
    else:
        train_iter = pipeline.make_train_iterator(config, tokenizer)
        eval_batches = pipeline.make_eval_batches(config, tokenizer)
    return tasks.Task(
        model=model, model_config=model_config,
        objective=objectives.get_named("causal_lm", config), backbone_path=(), head_prefixes=(),
        train_iter=train_iter,
        evaluate=lambda engine, params, abandon: eval_loss.evaluate(engine, params, eval_batches,
                                                                    abandon),
        describe=f"causal LM on {config.data.source} ({len(eval_batches)} validation batches)")
