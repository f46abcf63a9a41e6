"""Everything a run needs built from a config and a mesh: model, objective, optimizer, state
shardings and the jitted steps. Shared by train, bench, finetune and tests."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from fmjax import mesh as mesh_lib
from fmjax.models import flops
from fmjax.training import optimizer, state as state_lib, step as step_lib
from fmjax.nn import lora, moe
from fmjax import models, objectives


@dataclasses.dataclass
class Engine:
    config: Any
    mesh: Any
    model: Any
    model_config: models.ModelConfig
    objective: Any
    tx: Any
    schedule: Callable
    abstract_state: state_lib.TrainState
    shardings: state_lib.TrainState
    batch_sharding: Any
    train_step: Callable  # jitted (state, batch) -> (state, metrics)
    eval_step: Callable  # jitted (params, batch) -> sums

    def init_state(self) -> state_lib.TrainState:
        return state_lib.create_state(self.model, self.tx, self.config.seed,
                                      self.model_config.seq_len, self.mesh, self.shardings)

    def num_params(self) -> int:
        return state_lib.count_params(self.abstract_state.params)

    def row_length(self) -> int:
        """Raw tokens in one packed row: what the objective needs to fill model.seq_len."""
        row_length = getattr(self.objective, "row_length", None)
        return row_length(self.model_config.seq_len) if row_length else self.model_config.seq_len

    def tokens_per_step(self) -> int:
        return self.config.train.global_batch_size * self.row_length()

    def flops_per_token(self) -> float:
        """Model FLOPs per raw token of a row, fmjax's MFU convention (fmjax/models/flops.py)."""
        cfg = self.model_config
        family = models.get_family(cfg.family)
        if family.row_flops is None:  # MoE: active parameters (fmjax/models/flops.py)
            active = moe.active_params(self.num_params(), self.abstract_state.params, cfg.moe)
            return flops.flops_per_token(cfg, active, family.position_params(cfg))
        rows = jax.ShapeDtypeStruct((1, self.row_length()), jnp.int32)
        labels = jax.ShapeDtypeStruct((1,), jnp.int32)  # read by classification objectives
        batch = {"tokens": rows, "segment_ids": rows, "positions": rows, "labels": labels,
                 "weights": labels}
        inputs = jax.eval_shape(lambda b: self.objective.transform(b, jax.random.PRNGKey(0))
                                ["inputs"], batch)
        return family.row_flops(cfg, {k: v.shape for k, v in inputs.items()}) / self.row_length()

    def run_train_step(self, state, batch):
        with mesh_lib.activate(self.mesh):
            return self.train_step(state, batch)

    def run_eval_step(self, params, batch):
        with mesh_lib.activate(self.mesh):
            return self.eval_step(params, batch)


def build(config, mesh, *, model=None, model_config=None, objective=None,
          train_prefixes: tuple[str, ...] | None = None) -> Engine:
    """The engine for `config` on `mesh`. Fine-tuning passes its own `model` (e.g. a classifier
    over the family's decoder) and `objective`. With config.lora.rank > 0 the model is wrapped
    in low-rank adapters (fmjax/nn/lora.py) and only the adapters and the params under
    `train_prefixes` train; the rest is frozen (no optimizer state, never updated)."""
    if model is None:
        model, model_config = models.build(config)
    objective = objective or objectives.get(config)
    objectives.check_model_kind(objective, models.get_family(model_config.family).kind, config)
    trainable = None
    if config.lora.rank > 0:
        model = lora.LoraModel(model, config.lora)
        with mesh_lib.activate(mesh):
            abstract_params, _ = state_lib.abstract_params(model, model_config.seq_len)
        trainable = lora.trainable_mask(abstract_params, train_prefixes or ())
    options = step_lib.StepOptions.from_config(config)
    tx, schedule = optimizer.make_optimizer(config.optim, config.train.steps, trainable=trainable,
                                        skip_nonfinite=options.skip_nonfinite)
    with mesh_lib.activate(mesh):
        abstract, shardings = state_lib.state_shardings(model, tx, model_config.seq_len, mesh)
    batch_sharding = mesh_lib.batch_sharding(mesh)
    train_step = step_lib.jit_train_step(
        step_lib.make_train_step(model, objective, tx, schedule, options, trainable), shardings,
        batch_sharding, mesh)
    eval_step = step_lib.jit_eval_step(step_lib.make_eval_step(model, objective),
                                       shardings.params, batch_sharding, mesh)
    return Engine(config, mesh, model, model_config, objective, tx, schedule, abstract, shardings,
                  batch_sharding, train_step, eval_step)
