"""optax optimizer and learning-rate schedule from config.optim."""
from __future__ import annotations

import jax
import optax

from fmjax.config import ConfigError


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

    Relies on the leaf names used by fmjax.layers: `scale` (norms), `bias`, `embedding`."""
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


def make_optimizer(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
    o = config.optim
    schedule = make_schedule(o, config.train.steps)
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
    return optax.chain(*chain, opt), schedule
