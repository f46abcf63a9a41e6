"""Random pruning: a baseline that any real criterion should beat at the same sparsity."""
import jax
import jax.numpy as jnp

from fmjax.pruning.methods import register


def score(w, key):
    return jax.random.uniform(key, w.shape, jnp.float32)


register("random", score)
