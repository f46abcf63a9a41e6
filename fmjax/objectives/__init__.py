"""Training objectives, registered by name and chosen by `config.objective`.

An objective is a small object with
  transform(batch, rng) -> {"inputs": model kwargs, "targets": [B, T], "weights": [B, T]}
  (pure and jittable; the batch holds `tokens`, `segment_ids`, `positions`, all [B, T])
and the shared loss below works on what it returns. A new objective is one file
`fmjax/objectives/NAME.py` calling `register`; it is imported on first use of its name.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

import jax
import jax.numpy as jnp

from fmjax.config import ConfigError, did_you_mean

_OBJECTIVES: dict[str, Callable[[Any], Any]] = {}


def register(name: str):
    """Decorator for a factory `config -> objective`."""
    def wrap(factory):
        _OBJECTIVES[name] = factory
        return factory
    return wrap


def get(config):
    name = config.objective
    if name not in _OBJECTIVES:
        try:
            importlib.import_module(f"fmjax.objectives.{name}")
        except ModuleNotFoundError:
            pass
    if name not in _OBJECTIVES:
        known = sorted(_OBJECTIVES) or ["causal_lm"]
        raise ConfigError(f"config.objective = {name!r}: no such objective; add "
                          f"fmjax/objectives/{name}.py or use one of {known}."
                          f"{did_you_mean(name, known)}")
    return _OBJECTIVES[name](config)


def cross_entropy(logits_BTV, targets_BT, weights_BT, z_loss: float = 0.0):
    """Sums over weighted tokens: (cross-entropy sum, z-loss sum, weight sum), all float32."""
    logits_BTV = logits_BTV.astype(jnp.float32)
    lse_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    weights_BT = weights_BT.astype(jnp.float32)
    ce_sum = jnp.sum((lse_BT - target_logit_BT) * weights_BT)
    z_sum = z_loss * jnp.sum(jnp.square(lse_BT) * weights_BT)
    return ce_sum, z_sum, jnp.sum(weights_BT)
