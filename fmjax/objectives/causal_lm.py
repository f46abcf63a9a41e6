"""Causal language modelling: predict token t+1 from tokens <= t within each packed document."""
import jax.numpy as jnp

from fmjax import objectives


class CausalLM:
    def transform(self, batch, rng=None):
        tokens_BT, segment_ids_BT = batch["tokens"], batch["segment_ids"]
        next_BT = jnp.roll(tokens_BT, -1, axis=1)
        next_segment_BT = jnp.roll(segment_ids_BT, -1, axis=1).at[:, -1].set(0)
        weights_BT = (segment_ids_BT > 0) & (next_segment_BT == segment_ids_BT)
        inputs = {"tokens_BT": tokens_BT, "segment_ids_BT": segment_ids_BT,
                  "positions_BT": batch["positions"]}
        return {"inputs": inputs, "targets": jnp.where(weights_BT, next_BT, 0),
                "weights": weights_BT.astype(jnp.float32)}


@objectives.register("causal_lm")
def make(config):
    return CausalLM()
