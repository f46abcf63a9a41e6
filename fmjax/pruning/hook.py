"""Gradual pruning inside training (config.prune): an optax wrapper that keeps the masks in
the optimizer state, so they are part of the train state, checkpointed with it and restored
bit for bit on resume.

The update that makes step t (TrainState.step goes from t - 1 to t):
  1. at a schedule step t (schedule.py) the masks are recomputed from the weights it starts
     from at sparsity s(t), weights already pruned first (masks only grow), so the weights of
     step t have sparsity s(t); an N:M pattern has no ramp: its mask is made once, at
     prune.end_step;
  2. the params and the gradients are masked (newly pruned weights become 0; pruned weights
     get no gradient, so Adam's moments for them only decay) and the global gradient norm
     for clipping is that of the masked gradients;
  3. the wrapped optimizer updates, and the new params are masked again: momentum or weight
     decay cannot move a pruned weight, which stays exactly 0.0.

`attach(config, engine)` returns the engine with this optimizer (state shardings and train
step rebuilt); fine-tuning calls it (fmjax/training/finetune_stage.py)."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fmjax import config as config_lib, mesh as mesh_lib
from fmjax.pruning import masks as masks_lib, methods, targets as targets_lib
from fmjax.pruning.schedule import Schedule
from fmjax.training import optimizer, state as state_lib, step as step_lib


class PruneState(NamedTuple):
    inner: Any  # the wrapped optimizer's state
    masks: Any  # masks.py mask tree (bool, True = kept)
    step: jax.Array  # int32: updates applied so far


def enabled(config) -> bool:
    return config.prune.target_sparsity > 0


def masked_optimizer(tx, targets, schedule: Schedule, score, nm, key
                     ) -> optax.GradientTransformationExtraArgs:
    """`tx` (optimizer.make_optimizer's) with masks kept in its state; see the module doc."""
    counts_at_target = {path: masks_lib.prune_count(t, schedule.target)
                        for path, t in targets.items()}

    def init(params):
        return PruneState(tx.init(params), masks_lib.ones(params, targets),
                          jnp.zeros((), jnp.int32))

    def counts(step):
        s = schedule.sparsity(step)
        out = {}
        for path, t in targets.items():
            _, i, o = t.matrix_shape
            ramp = jnp.floor(s * (i * o) + 0.5).astype(jnp.int32)
            out[path] = jnp.where(step >= schedule.end, counts_at_target[path], ramp)
        return out

    def update(grad_sums, state, params=None, *, tokens, grad_norm=None, **extra):
        del grad_norm  # recomputed from the masked gradients
        step = state.step + 1  # the step this update makes
        masks = jax.lax.cond(
            schedule.is_update(step) if nm is None else step == schedule.end,
            lambda: masks_lib.compute(params, targets, score, counts(step), nm,
                                      jax.random.fold_in(key, step), previous=state.masks),
            lambda: state.masks)
        params = masks_lib.apply(params, masks)
        grad_sums = masks_lib.apply(grad_sums, masks)
        norm = optax.tree.norm(grad_sums) / tokens
        updates, inner = tx.update(grad_sums, state.inner, params, tokens=tokens,
                                   grad_norm=norm, **extra)
        new_params = masks_lib.apply(optimizer.apply_updates(params, updates), masks)
        return optimizer.NewParams(new_params), PruneState(inner, masks, step)

    return optax.GradientTransformationExtraArgs(init, update)


def targets_of(engine) -> dict:
    """The engine's prunable kernels (targets.py), from its model's logical axes."""
    with mesh_lib.activate(engine.mesh):
        _, boxed = state_lib.abstract_params(engine.model, engine.model_config.seq_len)
    return targets_lib.find(boxed)


def attach(config, engine):
    """`engine` unchanged when config.prune.target_sparsity is 0; else the same engine whose
    optimizer prunes (state shardings and jitted train step rebuilt for the masks)."""
    if not enabled(config):
        return engine
    config_lib.validate_prune(config.prune)
    if config.lora.rank > 0:
        raise config_lib.ConfigError(
            f"config.prune.target_sparsity = {config.prune.target_sparsity}: pruning trains "
            f"the kernels, and config.lora.rank = {config.lora.rank} freezes them (merged "
            "adapters would fill the zeros in); set --config.lora.rank=0 or "
            "--config.prune.target_sparsity=0")
    if config.prune.end_step > config.train.steps:
        raise config_lib.ConfigError(
            f"config.prune.end_step = {config.prune.end_step}: after the run's last step "
            f"(config.train.steps = {config.train.steps}), so the target sparsity would never "
            f"be reached; set --config.prune.end_step to at most {config.train.steps}")
    nm = config_lib.parse_pattern(config.prune.pattern)
    targets = targets_of(engine)
    masks_lib.check_pattern(targets, nm)
    score = methods.get(config.prune.method)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x9A7E)
    tx = masked_optimizer(engine.tx, targets, Schedule.from_config(config.prune), score, nm, key)
    with mesh_lib.activate(engine.mesh):
        abstract, shardings = state_lib.state_shardings(engine.model, tx,
                                                        engine.model_config.seq_len, engine.mesh)
    options = step_lib.StepOptions.from_config(config)
    train_step = step_lib.jit_train_step(
        step_lib.make_train_step(engine.model, engine.objective, tx, engine.schedule, options),
        shardings, engine.batch_sharding, engine.mesh)
    return dataclasses.replace(engine, tx=tx, abstract_state=abstract, shardings=shardings,
                               train_step=train_step)


def sparsity_hook(engine):
    """A loop hook: {"sparsity": fraction of the target kernels' weights that are 0}."""
    targets = targets_of(engine)

    def hook(step, state, ctx):
        return {"sparsity": masks_lib.zero_fraction(state.params, targets)}
    return hook


def first_candidate_step(config) -> int:
    """The first step whose weights have the target sparsity: earlier evaluations are not
    candidates for the best checkpoint (a denser model scores better)."""
    return config.prune.end_step if enabled(config) else 0


def check_resume(config, workdir: str) -> None:
    """Before restoring: a workdir's checkpoints hold masks iff its run pruned, so turning
    pruning on or off is refused (the optimizer state would not restore); other config.prune
    changes are refused unless config.allow_config_change."""
    from fmjax.training import checkpoint
    if not os.path.isdir(checkpoint.checkpoint_dir(workdir)):
        return
    try:
        saved = config_lib.from_json_dict(checkpoint.read_config(workdir))
    except FileNotFoundError:
        return
    keys = ["prune." + k for k in config_lib.flat_keys(config.prune)]
    changed = config_lib.diff(saved, config, keys)
    if not changed:
        return
    if enabled(saved) != enabled(config):
        raise config_lib.ConfigError(
            f"config.prune.target_sparsity = {config.prune.target_sparsity}: the workdir's "
            f"checkpoint was written with target_sparsity = {saved.prune.target_sparsity} "
            "(its optimizer state " + ("holds" if enabled(saved) else "has no")
            + " pruning masks); resume with the same value or use a new --workdir")
    if not config.allow_config_change:
        raise config_lib.ConfigError(
            "the workdir's checkpoint was written with other pruning settings: "
            + "; ".join(changed) + ". Pass --config.allow_config_change=True if the change is "
            "intended, or use a new --workdir.")
