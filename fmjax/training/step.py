"""The pure train and eval step functions: (state, batch) -> (state, metrics)."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from fmjax import mesh as mesh_lib, objectives
from fmjax.nn import moe
from fmjax.training import optimizer


def _loss_sums(model, objective, z_loss, params, batch, rng, deterministic, moe_weights=None):
    """(ce + z sum + aux, (ce sum, weight sum, moe metrics)) for one (micro)batch.

    moe_weights (mixture of experts: {"load_balance": w, "router_z": w}; None = dense): the
    model's auxiliary losses (fmjax/nn/moe.py, means over its sparse layers) enter the loss
    as weight sum x (w_lb x load balance + w_z x router z), so that after the train step's
    division by the weight sum they add w_lb x lb + w_z x z to the mean cross-entropy; their
    values (and dropped assignments) are returned as metrics."""
    transform_rng, dropout_rng = jax.random.split(rng)
    example = objective.transform(batch, transform_rng)
    apply = functools.partial(model.apply, {"params": params}, **example["inputs"],
                              deterministic=deterministic, rngs={"dropout": dropout_rng})
    aux = {}
    if moe_weights is not None:
        def apply(_apply=apply, **kw):  # noqa: E306  (the same call, with the aux collection)
            out, state = _apply(mutable=[moe.AUX], **kw)
            aux.update(moe.aux_metrics(state.get(moe.AUX, {})))
            return out
    if z_loss == 0.0 and getattr(model, "supports_hidden_output", False):
        # output layer fused into the loss: same sums, no [B, T, V] logits in memory
        x_BTD, table_VD = apply(return_hidden=True)
        ce = objectives.output_cross_entropy(x_BTD, table_VD, example["targets"],
                                             example["weights"], model.cfg.vocab_size)
        loss, w = ce, jnp.sum(example["weights"].astype(jnp.float32))
    else:
        logits_BTV = apply()
        ce, z, w = objectives.cross_entropy(logits_BTV, example["targets"], example["weights"],
                                            z_loss)
        loss = ce + z
    if moe_weights is not None:
        loss = loss + w * sum(moe_weights[k] * aux[k] for k in moe_weights if k in aux)
    return loss, (ce, w, aux)


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
    moe_load_balance: float | None = None  # model.moe.load_balance_loss; None = dense model
    moe_router_z: float | None = None  # model.moe.router_z_loss; None = dense model

    @classmethod
    def from_config(cls, config) -> StepOptions:
        sparse = config.model.moe.num_experts > 0
        return cls(z_loss=config.optim.z_loss, microbatches=config.train.microbatches,
                   deterministic=config.model.dropout == 0.0,
                   skip_nonfinite=config.train.on_nonfinite == "skip",
                   moe_load_balance=config.model.moe.load_balance_loss if sparse else None,
                   moe_router_z=config.model.moe.router_z_loss if sparse else None)

    @property
    def moe_weights(self) -> dict | None:
        if self.moe_load_balance is None:
            return None
        return {"load_balance": self.moe_load_balance, "router_z": self.moe_router_z}


def _value_and_grad_of(loss_fn, trainable):
    """jax.value_and_grad(loss_fn, has_aux=True) over the params; with a `trainable` bool tree
    (LoRA), differentiated wrt the trainable leaves only: the frozen ones get zero gradients
    and no backward pass of their own (a quantized base's integers cannot be differentiated)."""
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
    if trainable is None:
        return value_and_grad

    def frozen_aware(params, *args):
        train = jax.tree.map(lambda t, p: p if t else None, trainable, params)
        merged = lambda part: jax.tree.map(  # noqa: E731
            lambda t, q, p: q if t else p, trainable, part, params)
        out, grads = jax.value_and_grad(lambda part: loss_fn(merged(part), *args),
                                        has_aux=True)(train)
        return out, jax.tree.map(lambda t, g, p: g if t else _zero_grad(p),
                                 trainable, grads, params)
    return frozen_aware


def _zero_grad(p):
    """The zero gradient of param `p`: float32 for an integer (quantized, frozen) param."""
    return jnp.zeros(p.shape, p.dtype if jnp.issubdtype(p.dtype, jnp.inexact) else jnp.float32)


def make_train_step(model, objective, tx, schedule, options: StepOptions, trainable=None):
    """(state, batch) -> (state, metrics). `tx` is fmjax/training/optimizer.py's transformation
    over summed gradients (it applies trainable masks and the non-finite skip itself);
    `trainable` (a bool tree over the params, LoRA) limits differentiation to its True leaves."""
    z_loss, m = options.z_loss, options.microbatches
    grad_fn = _value_and_grad_of(
        lambda p, b, r: _loss_sums(model, objective, z_loss, p, b, r, options.deterministic,
                                   options.moe_weights), trainable)

    def train_step(state, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        if m == 1:
            (_, (ce, w, aux)), grads = grad_fn(state.params, batch, rng)
        else:
            def body(carry, xs):
                grads_acc, ce_acc, w_acc, aux_acc = carry
                i, micro = xs
                (_, (ce, w, aux)), g = grad_fn(state.params, micro, jax.random.fold_in(rng, i))
                return (jax.tree.map(jnp.add, grads_acc, g), ce_acc + ce, w_acc + w,
                        jax.tree.map(jnp.add, aux_acc, aux)), None
            zeros = jax.tree.map(_zero_grad, state.params)
            aux0 = moe.zero_metrics() if options.moe_weights is not None else {}
            (grads, ce, w, aux), _ = jax.lax.scan(
                body, (zeros, 0.0, 0.0, aux0), (jnp.arange(m), _split_microbatches(batch, m)))
            aux = {k: v if k == "dropped" else v / m for k, v in aux.items()}  # mean, total
        w = jnp.maximum(w, 1.0)
        grad_norm = optax.global_norm(grads) / w  # of grads / w, without writing grads / w
        metrics = {"loss": ce / w, "grad_norm": grad_norm, "learning_rate": schedule(state.step),
                   "target_tokens": w}
        # mixture of experts: the auxiliary losses' values (unweighted) and dropped assignments
        metrics.update({f"moe_{k}": v for k, v in aux.items()})
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
        _, (ce, w, _) = _loss_sums(model, objective, 0.0, params, batch, jax.random.PRNGKey(0),
                                   True)
        return {"ce_sum": ce, "weight_sum": w}
    return eval_step


def jit_train_step(train_step, state_shardings, batch_sharding, mesh):
    return jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, mesh_lib.replicated(mesh)), donate_argnums=0)


def jit_eval_step(eval_step, params_shardings, batch_sharding, mesh):
    return jax.jit(eval_step, in_shardings=(params_shardings, batch_sharding),
                   out_shardings=mesh_lib.replicated(mesh))
