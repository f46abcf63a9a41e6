"""The pure train and eval step functions: (state, batch) -> (state, metrics)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from fmjax import cpu_adamw, cpu_ffi, mesh as mesh_lib, objectives, optim


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


def _apply_updates(params, updates, trainable):
    """params + updates; leaves marked False in `trainable` are returned untouched (bitwise:
    adding a zero update would turn -0.0 into +0.0)."""
    if trainable is None:
        return optax.apply_updates(params, updates)
    return jax.tree.map(lambda p, u, t: optax.apply_updates(p, u) if t else p,
                        params, updates, trainable)


def make_train_step(model, objective, tx, schedule, config, trainable=None):
    """`trainable`: optional bool tree over the params; False leaves are frozen."""
    z_loss, m = config.optim.z_loss, config.train.microbatches
    deterministic = config.model.dropout == 0.0
    skip_nonfinite = config.train.on_nonfinite == "skip"
    fused_update = cpu_adamw.make_update(config, schedule, optim.decay_mask(config.optim))
    grad_fn = jax.value_and_grad(
        lambda p, b, r: _loss_sums(model, objective, z_loss, p, b, r, deterministic), has_aux=True)

    def optax_update(grads, w, grad_norm, opt_state, params, finite):
        """(params, opt_state) after tx's step on grads / w (cpu_adamw.make_update's
        signature; grad_norm is tx's own business here)."""
        grads = jax.tree.map(lambda g: g / w, grads)
        updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = _apply_updates(params, updates, trainable)
        if not skip_nonfinite:
            return new_params, new_opt_state
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        return keep(new_params, params), keep(new_opt_state, opt_state)

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
        if skip_nonfinite:
            finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
            metrics["skipped"] = (~finite).astype(jnp.int32)
        params, opt_state = cpu_ffi.kernel_or_xla(
            cpu_adamw.applies(config, state.params, trainable), fused_update, optax_update,
            grads, w, grad_norm, state.opt_state, state.params, finite)
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
