"""Fine-tuning tasks, registered by name and chosen by `config.task.name`.

A task is one file `fmjax/tasks/NAME.py` that registers a factory
`(config, tokenizer) -> Task`: the model (usually the pretrained family's decoder, perhaps under
a head), its objective, where the pretrained decoder's params sit inside the model's params,
the training batches and the evaluation. `fmjax.training.finetune_stage` does the rest (loading the
pretrained params, LoRA, the loop, best checkpoint, report), so a new task never edits it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from fmjax.config import ConfigError
from fmjax.registry import Registry


@dataclasses.dataclass
class Task:
    model: Any  # Linen module: params tree holds the pretrained decoder at `backbone_path`
    model_config: Any  # fmjax.models.ModelConfig of the decoder
    objective: Any  # transform(batch, rng) -> inputs / targets / weights (fmjax.objectives)
    backbone_path: tuple[str, ...]  # () when the model IS the decoder
    head_prefixes: tuple[str, ...]  # params that train alongside LoRA adapters (new heads)
    train_iter: Any  # checkpointable iterator of local batches
    evaluate: Callable[[Any, Any, Callable[[], bool]], dict]  # (engine, params, abandon) -> metrics
    describe: str = ""  # one line for the log: data, classes, sizes


TASKS: Registry[Callable[[Any, Any], Task]] = Registry(
    "fmjax.tasks", "task.name", "task", ConfigError)


def register(name: str):
    def wrap(factory):
        return TASKS.register(name, factory)
    return wrap


def get(config) -> Callable[[Any, Any], Task]:
    return TASKS.get(config.task.name)
