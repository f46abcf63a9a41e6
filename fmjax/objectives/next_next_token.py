"""Next-next-token prediction, docs/extending.md's example of adding an objective: position t of a
decoder predicts token t + 2 of the same segment (weight 0 where there is none)."""
import jax.numpy as jnp

from fmjax import objectives


class NextNextToken:
    model_kinds = ("decoder",)  # trains decoder-only families (gpt2, llama)

    def transform(self, batch, rng=None):
        tokens_BT, segment_ids_BT = batch["tokens"], batch["segment_ids"]
        ahead_BT = jnp.roll(tokens_BT, -2, axis=1)
        ahead_segment_BT = jnp.roll(segment_ids_BT, -2, axis=1).at[:, -2:].set(0)
        weights_BT = ((segment_ids_BT > 0) & (ahead_segment_BT == segment_ids_BT)
                      ).astype(jnp.float32)
        inputs = {"tokens_BT": tokens_BT, "segment_ids_BT": segment_ids_BT,
                  "positions_BT": batch["positions"]}
        return {"inputs": inputs, "targets": jnp.where(weights_BT > 0, ahead_BT, 0),
                "weights": weights_BT}


@objectives.register("next_next_token")
def make(config):
    return NextNextToken()
