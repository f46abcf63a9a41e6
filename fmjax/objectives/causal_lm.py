"""Causal language modelling: predict token t+1 from tokens <= t within each packed document.

Position t of the output predicts `tokens[:, t + 1]` and has weight 1 when positions t and t+1
are real tokens of the same segment (segment id > 0), else 0; targets are 0 where the weight is.

Loss mask (fine-tuning): when the batch also holds `loss_mask` ([B, T], int or float), its value
at position t says how much the token AT t counts as a target (1 = trained on, 0 = context only,
e.g. a prompt, bos or padding). Because the weight at position t scores the prediction of token
t+1, the weights are multiplied by the mask shifted left by one, `loss_mask[:, t + 1]` (0 at the
last position). Without the key the result is exactly the segment-only weights above.
"""
import jax.numpy as jnp

from fmjax import objectives

LOSS_MASK = "loss_mask"


class CausalLM:
    model_kinds = ("decoder",)  # decoder-only families (gpt2, llama)

    def transform(self, batch, rng=None):
        tokens_BT, segment_ids_BT = batch["tokens"], batch["segment_ids"]
        next_BT = jnp.roll(tokens_BT, -1, axis=1)
        next_segment_BT = jnp.roll(segment_ids_BT, -1, axis=1).at[:, -1].set(0)
        weights_BT = ((segment_ids_BT > 0) & (next_segment_BT == segment_ids_BT)
                      ).astype(jnp.float32)
        if LOSS_MASK in batch:  # the weight at t scores token t+1: use loss_mask[:, t + 1]
            next_mask_BT = jnp.roll(batch[LOSS_MASK], -1, axis=1).at[:, -1].set(0)
            weights_BT = weights_BT * next_mask_BT.astype(jnp.float32)
        inputs = {"tokens_BT": tokens_BT, "segment_ids_BT": segment_ids_BT,
                  "positions_BT": batch["positions"]}
        return {"inputs": inputs, "targets": jnp.where(weights_BT != 0, next_BT, 0),
                "weights": weights_BT}


@objectives.register("causal_lm")
def make(config):
    return CausalLM()
