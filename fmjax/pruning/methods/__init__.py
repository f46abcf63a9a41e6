"""Pruning methods, registered by name: `fmjax/pruning/methods/NAME.py` calls
`register(NAME, score)` with score(w, key) -> an array of w's shape; the lowest scores are
pruned. A new method is one new file."""
from __future__ import annotations

from typing import Callable

from fmjax.config import ConfigError
from fmjax.registry import Registry

Score = Callable  # (w: jax.Array, key: jax.Array) -> jax.Array, same shape; higher = keep

REGISTRY: Registry[Score] = Registry("fmjax.pruning.methods", "prune.method", "pruning method",
                                     ConfigError)


def register(name: str, score: Score) -> Score:
    return REGISTRY.register(name, score)


def get(name: str) -> Score:
    """The score function of method `name`; an unknown name is a ConfigError naming
    config.prune.method with a did-you-mean."""
    return REGISTRY.get(name)
