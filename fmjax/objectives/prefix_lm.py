"""Prefix language modelling (Raffel et al. 2020, section 3.2, "prefix LM"): each packed
segment is split at a random point into a prefix, seen with bidirectional attention, and the
rest, predicted causally.

Each segment of n >= 2 tokens draws its prefix length uniformly from [min(min_prefix, n - 1),
n - 1] (`config.prefix_lm.min_prefix`, default 1: so 1 .. n - 1), independently per segment;
a 1-token segment has no prefix and nothing to predict. `prefix_mask_BT` is 1 on the prefix
tokens. The loss is the causal next-token loss restricted to the part after the prefix:
position t (predicting token t + 1) has weight 1 iff tokens t and t + 1 are real tokens of the
same segment and token t + 1 is not in the prefix; so the last prefix token predicts the first
token after it, and no prefix token is ever a target.

The model is a decoder that takes `prefix_mask_BT` (attention: same segment, key real, and key
position <= query position or key in the prefix).
"""
import jax
import jax.numpy as jnp

from fmjax import objectives
from fmjax.config import ConfigError


class PrefixLM:
    model_kinds = ("decoder",)  # gpt2, llama

    def __init__(self, min_prefix: int):
        self.min_prefix = min_prefix

    def transform(self, batch, rng):
        tokens_BT, segment_ids_BT = batch["tokens"], batch["segment_ids"]
        b, t = tokens_BT.shape
        # segment s of row b has lengths_BS[b, s] tokens (segment ids are < t + 1)
        lengths_BS = jax.vmap(lambda s_T: jnp.bincount(s_T, length=t + 1))(segment_ids_BT)
        low_BS = jnp.minimum(self.min_prefix, lengths_BS - 1)
        prefix_BS = jax.random.randint(rng, (b, t + 1), low_BS, jnp.maximum(lengths_BS, low_BS + 1))
        prefix_BS = jnp.where(lengths_BS >= 2, prefix_BS, 0)
        prefix_BT = jnp.take_along_axis(prefix_BS, segment_ids_BT, axis=1)
        offsets_BT = objectives.segment_offsets(segment_ids_BT)
        in_prefix_BT = (segment_ids_BT > 0) & (offsets_BT < prefix_BT)

        next_BT = jnp.roll(tokens_BT, -1, axis=1)
        next_segment_BT = jnp.roll(segment_ids_BT, -1, axis=1).at[:, -1].set(0)
        next_in_prefix_BT = jnp.roll(in_prefix_BT, -1, axis=1)
        weights_BT = ((segment_ids_BT > 0) & (next_segment_BT == segment_ids_BT)
                      & ~next_in_prefix_BT).astype(jnp.float32)
        inputs = {"tokens_BT": tokens_BT, "segment_ids_BT": segment_ids_BT,
                  "positions_BT": batch["positions"],
                  "prefix_mask_BT": in_prefix_BT.astype(jnp.int32)}
        return {"inputs": inputs, "targets": jnp.where(weights_BT != 0, next_BT, 0),
                "weights": weights_BT}


@objectives.register("prefix_lm")
def make(config):
    if config.prefix_lm.min_prefix < 1:
        raise ConfigError(f"config.prefix_lm.min_prefix = {config.prefix_lm.min_prefix}: must "
                          "be >= 1 (a prefix of 0 tokens is causal_lm); set "
                          "--config.prefix_lm.min_prefix=1")
    return PrefixLM(config.prefix_lm.min_prefix)
