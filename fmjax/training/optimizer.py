"""optax optimizer and learning-rate schedule from config.optim: the optimizer factory."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fmjax import kernels
from fmjax.config import ConfigError
from fmjax.nn import lora


def make_schedule(optim_config, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then the named decay over the remaining steps."""
    o = optim_config
    peak, warmup = o.learning_rate, min(o.warmup_steps, total_steps)
    floor = peak * o.min_lr_ratio
    rest = max(total_steps - warmup, 1)
    if o.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, rest, alpha=o.min_lr_ratio)
    elif o.schedule == "linear":
        decay = optax.linear_schedule(peak, floor, rest)
    elif o.schedule == "constant":
        decay = optax.constant_schedule(peak)
    elif o.schedule == "rsqrt":  # T5: peak * sqrt(warmup / step) after warmup
        offset = max(warmup, 1)
        decay = lambda count: peak * jax.lax.rsqrt((count + offset) / offset)
    elif o.schedule == "wsd":  # warmup-stable-decay: flat, then linear decay at the end
        decay_steps = max(int(rest * o.wsd_decay_fraction), 1)
        decay = optax.join_schedules(
            [optax.constant_schedule(peak), optax.linear_schedule(peak, floor, decay_steps)],
            [rest - decay_steps])
    else:
        raise ConfigError(f"config.optim.schedule = {o.schedule!r}: unknown schedule; use one of "
                          "cosine, linear, rsqrt, wsd, constant")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(optim_config):
    """Weight decay applies to weight matrices, and to norms/biases/embeddings only if asked.

    Relies on the leaf names used by fmjax.nn.layers: `scale` (norms), `bias`, `embedding`."""
    o = optim_config
    excluded = set()
    if not o.decay_norms:
        excluded.add("scale")
    if not o.decay_biases:
        excluded.add("bias")
    if not o.decay_embeddings:
        excluded.add("embedding")

    def mask(params):
        def keep(path, _):
            return getattr(path[-1], "key", None) not in excluded
        return jax.tree_util.tree_map_with_path(keep, params)
    return mask


def make_optax_chain(optim_config, schedule) -> optax.GradientTransformation:
    """The optax chain of config.optim: clip_by_global_norm (if set), then adamw or adafactor
    with the weight-decay mask. Its state is what checkpoints store under opt_state."""
    o = optim_config
    if o.name == "adamw":
        opt = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                          mask=decay_mask(o))
    elif o.name == "adafactor":
        opt = optax.adafactor(schedule, weight_decay_rate=o.weight_decay or None,
                              weight_decay_mask=decay_mask(o) if o.weight_decay else None)
    else:
        raise ConfigError(f"config.optim.name = {o.name!r}: unknown optimizer; use adamw or "
                          "adafactor")
    chain = [optax.clip_by_global_norm(o.clip_norm)] if o.clip_norm > 0 else []
    return optax.chain(*chain, opt)


class NewParams(NamedTuple):
    """Updates that are the new parameters themselves: what `make_optimizer`'s transformation
    returns, so that an in-place fused update (the `adamw` kernel) needs no second pass."""
    params: Any


def apply_updates(params, updates):
    """params after `updates`: NewParams as they are, anything else added (optax's rule)."""
    if isinstance(updates, NewParams):
        return updates.params
    return optax.apply_updates(params, updates)


def _masked_apply(params, updates, trainable):
    """params + updates; leaves marked False in `trainable` are returned untouched (bitwise:
    adding a zero update would turn -0.0 into +0.0)."""
    if trainable is None:
        return optax.apply_updates(params, updates)
    return jax.tree.map(lambda p, u, t: optax.apply_updates(p, u) if t else p,
                        params, updates, trainable)


def make_optimizer(optim_config, total_steps: int, *, trainable=None, skip_nonfinite=False
                   ) -> tuple[optax.GradientTransformationExtraArgs, optax.Schedule]:
    """(tx, schedule) for config.optim over `total_steps`. tx is an optax transformation over
    gradients SUMMED over `tokens` target tokens:

        updates, state = tx.update(grad_sums, state, params, tokens=w, grad_norm=n, finite=f)
        params = apply_updates(params, updates)     # updates: NewParams

    where n is the global norm of grad_sums / w, and with `skip_nonfinite` a False `finite`
    leaves params and state unchanged. Its state is make_optax_chain's (masked to the
    `trainable` leaves when given: the others get no state and never change). adamw with every
    leaf trainable runs as operation `adamw` of fmjax/kernels/ (one in-place pass where a
    kernel takes it), else optax's chain."""
    o = optim_config
    schedule = make_schedule(o, total_steps)
    chain = make_optax_chain(o, schedule)
    if trainable is not None:
        chain = lora.masked_optimizer(chain, trainable)
    fused = dict(b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                 clip_norm=o.clip_norm, schedule=schedule, decay_mask=decay_mask(o))

    def optax_update(grad_sums, tokens, grad_norm, state, params, finite, **_):
        """(params, state) after the chain's step on grad_sums / tokens (grad_norm is the
        chain's own business here)."""
        grads = jax.tree.map(lambda g: g / tokens, grad_sums)
        updates, new_state = chain.update(grads, state, params)
        new_params = _masked_apply(params, updates, trainable)
        if not skip_nonfinite:
            return new_params, new_state
        keep = lambda new, old: jax.tree.map(  # noqa: E731
            lambda a, b: jnp.where(finite, a, b), new, old)
        return keep(new_params, params), keep(new_state, state)

    def update(grad_sums, state, params=None, *, tokens, grad_norm, finite, **_):
        args = (grad_sums, tokens, grad_norm, state, params, finite)
        if o.name == "adamw" and trainable is None:
            new_params, new_state = kernels.call("adamw", optax_update, *args, **fused)
        else:
            new_params, new_state = optax_update(*args)
        return NewParams(new_params), new_state

    return optax.GradientTransformationExtraArgs(chain.init, update), schedule
