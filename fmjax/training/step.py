"""The pure train and eval step functions: (state, batch) -> (state, metrics)."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from fmjax import mesh as mesh_lib, objectives
from fmjax.training import optimizer


def _loss_sums(model, objective, z_loss, params, batch, rng, deterministic):
    """(ce + z sum, (ce sum, weight sum)) for one (micro)batch."""
    transform_rng, dropout_rng = jax.random.split(rng)
    example = objective.transform(batch, transform_rng)
    apply = functools.partial(model.apply, {"params": params}, **example["inputs"],
                              deterministic=deterministic, rngs={"dropout": dropout_rng})
    if z_loss == 0.0 and getattr(model, "supports_hidden_output", False):
        # output layer fused into the loss: same sums, no [B, T, V] logits in memory
        x_BTD, table_VD = apply(return_hidden=True)
        ce = objectives.output_cross_entropy(x_BTD, table_VD, example["targets"],
                                             example["weights"], model.cfg.vocab_size)
        return ce, (ce, jnp.sum(example["weights"].astype(jnp.float32)))
    logits_BTV = apply()
    ce, z, w = objectives.cross_entropy(logits_BTV, example["targets"], example["weights"], z_loss)
    return ce + z, (ce, w)


def _split_microbatches(batch, m: int):
    """[B, ...] -> [m, B/m, ...] taking every m-th row, so each device keeps its own rows."""
    def split(x):
        return jnp.swapaxes(x.reshape(x.shape[0] // m, m, *x.shape[1:]), 0, 1)
    return jax.tree.map(split, batch)


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """What the train step reads from the config, and nothing else."""
    z_loss: float = 0.0  # optim.z_loss: coefficient of the log(Z)^2 auxiliary loss
    microbatches: int = 1  # train.microbatches: scans over slices of the batch per update
    deterministic: bool = True  # model.dropout == 0: no dropout rng is consumed
    skip_nonfinite: bool = False  # train.on_nonfinite == "skip": a NaN/inf update changes nothing

    @classmethod
    def from_config(cls, config) -> StepOptions:
        return cls(z_loss=config.optim.z_loss, microbatches=config.train.microbatches,
                   deterministic=config.model.dropout == 0.0,
                   skip_nonfinite=config.train.on_nonfinite == "skip")


def make_train_step(model, objective, tx, schedule, options: StepOptions):
    """(state, batch) -> (state, metrics). `tx` is fmjax/training/optimizer.py's transformation
    over summed gradients (it applies trainable masks and the non-finite skip itself)."""
    z_loss, m = options.z_loss, options.microbatches
    grad_fn = jax.value_and_grad(
        lambda p, b, r: _loss_sums(model, objective, z_loss, p, b, r, options.deterministic),
        has_aux=True)

    def train_step(state, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        if m == 1:
            (_, (ce, w)), grads = grad_fn(state.params, batch, rng)
        else:
            def body(carry, xs):
                grads_acc, ce_acc, w_acc = carry
                i, micro = xs
                (_, (ce, w)), g = grad_fn(state.params, micro, jax.random.fold_in(rng, i))
                return (jax.tree.map(jnp.add, grads_acc, g), ce_acc + ce, w_acc + w), None
            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (grads, ce, w), _ = jax.lax.scan(
                body, (zeros, 0.0, 0.0), (jnp.arange(m), _split_microbatches(batch, m)))
        w = jnp.maximum(w, 1.0)
        grad_norm = optax.global_norm(grads) / w  # of grads / w, without writing grads / w
        metrics = {"loss": ce / w, "grad_norm": grad_norm, "learning_rate": schedule(state.step),
                   "target_tokens": w}
        finite = jnp.asarray(True)  # with skip, a NaN/inf loss or gradient changes nothing
        if options.skip_nonfinite:
            finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
            metrics["skipped"] = (~finite).astype(jnp.int32)
        updates, opt_state = tx.update(grads, state.opt_state, state.params, tokens=w,
                                       grad_norm=grad_norm, finite=finite)
        params = optimizer.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def make_eval_step(model, objective):
    def eval_step(params, batch):
        _, (ce, w) = _loss_sums(model, objective, 0.0, params, batch, jax.random.PRNGKey(0), True)
        return {"ce_sum": ce, "weight_sum": w}
    return eval_step


def jit_train_step(train_step, state_shardings, batch_sharding, mesh):
    return jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, mesh_lib.replicated(mesh)), donate_argnums=0)


def jit_eval_step(eval_step, params_shardings, batch_sharding, mesh):
    return jax.jit(eval_step, in_shardings=(params_shardings, batch_sharding),
                   out_shardings=mesh_lib.replicated(mesh))
