"""Magnitude pruning (Han et al. 2015; Zhu & Gupta 2017): the smallest |w| go."""
import jax.numpy as jnp

from fmjax.pruning.methods import register


def score(w, key):
    del key  # deterministic
    return jnp.abs(w.astype(jnp.float32))


register("magnitude", score)
