"""Masked language modelling (BERT; Devlin et al. 2019, section 3.1 and appendix A.1).

Per packed row, exactly max(1, round(mask_rate x n)) of its n regular tokens are chosen,
uniformly without replacement (BERT's per-sequence count; a row without regular tokens gets
none). Regular = real (segment > 0) and not pad / bos / eos / unk or an extra id
(`objectives.regular_tokens`), so special tokens and padding are never chosen. Each chosen
token is, independently:
  - with probability mask_fraction (0.8): replaced by [MASK] (`mask_id`: config.tokenizer.mask_id,
    an imported BERT's; by default model.vocab_size - 1, the last of `tokenizer.extra_ids`,
    which must then be >= 1),
  - with probability random_fraction (0.1): replaced by a random regular id, uniform over the
    tokenizer's pieces minus the special ids (never an extra id; it may equal the original),
  - otherwise kept.
Targets are the original tokens at the chosen positions (weight 1), 0 elsewhere (weight 0).
The model is an encoder: it sees {tokens_BT (corrupted), segment_ids_BT, positions_BT} and
attends bidirectionally within each segment.

Config (`config.mlm`): mask_rate, mask_fraction, random_fraction.
"""
import jax
import jax.numpy as jnp

from fmjax import objectives
from fmjax.config import ConfigError


def mask_id(config) -> int:
    """The [MASK] id: config.tokenizer.mask_id, or (-1) the last embedding row."""
    m = config.tokenizer.mask_id
    return m if m >= 0 else config.model.vocab_size - 1


class MaskedLM:
    model_kinds = ("encoder",)  # bert

    def __init__(self, config):
        m = config.mlm
        if not 0.0 < m.mask_rate <= 1.0:
            raise ConfigError(f"config.mlm.mask_rate = {m.mask_rate}: must be in (0, 1]; "
                              "BERT uses --config.mlm.mask_rate=0.15")
        if min(m.mask_fraction, m.random_fraction) < 0 or m.mask_fraction + m.random_fraction > 1:
            raise ConfigError(
                f"config.mlm.mask_fraction = {m.mask_fraction} and config.mlm.random_fraction = "
                f"{m.random_fraction}: each must be >= 0 and their sum <= 1 (the rest is kept); "
                "BERT uses 0.8 and 0.1")
        if config.tokenizer.mask_id < 0:  # fmjax's own: the last id, after the pieces
            objectives.require_extra_ids(config, 1, "the [MASK] id")
        self.config = config
        self.mask_rate, self.mask_fraction = m.mask_rate, m.mask_fraction
        self.random_fraction = m.random_fraction
        self.mask_id = mask_id(config)
        self.num_pieces = config.model.vocab_size - config.tokenizer.extra_ids
        self.specials = [i for i in objectives.special_ids(config) if i < self.num_pieces]

    def random_regular_ids(self, rng, shape):
        """Uniform over [0, num_pieces) minus the special ids: draw an index among the regular
        ids and step it past each special id at or below it (specials ascending)."""
        ids = jax.random.randint(rng, shape, 0, self.num_pieces - len(self.specials))
        for special in self.specials:
            ids = ids + (ids >= special)
        return ids.astype(jnp.int32)

    def transform(self, batch, rng):
        tokens_BT, segment_ids_BT = batch["tokens"], batch["segment_ids"]
        choose_rng, action_rng, random_rng = jax.random.split(rng, 3)
        regular_BT = objectives.regular_tokens(tokens_BT, segment_ids_BT, self.config)
        # the k regular tokens with the smallest uniform scores: k of n uniformly at random
        scores_BT = jnp.where(regular_BT, jax.random.uniform(choose_rng, tokens_BT.shape), 2.0)
        rank_BT = jnp.argsort(jnp.argsort(scores_BT, axis=1), axis=1)
        n_B = jnp.sum(regular_BT, axis=1)
        k_B = jnp.where(n_B > 0, jnp.maximum(1, jnp.floor(self.mask_rate * n_B + 0.5)), 0)
        chosen_BT = regular_BT & (rank_BT < k_B[:, None])
        u_BT = jax.random.uniform(action_rng, tokens_BT.shape)
        to_mask_BT = chosen_BT & (u_BT < self.mask_fraction)
        to_random_BT = chosen_BT & (u_BT >= self.mask_fraction) & (
            u_BT < self.mask_fraction + self.random_fraction)
        inputs_BT = jnp.where(to_mask_BT, self.mask_id, tokens_BT)
        inputs_BT = jnp.where(to_random_BT, self.random_regular_ids(random_rng, tokens_BT.shape),
                              inputs_BT).astype(tokens_BT.dtype)
        weights_BT = chosen_BT.astype(jnp.float32)
        inputs = {"tokens_BT": inputs_BT, "segment_ids_BT": segment_ids_BT,
                  "positions_BT": batch["positions"]}
        return {"inputs": inputs, "targets": jnp.where(chosen_BT, tokens_BT, 0),
                "weights": weights_BT}


@objectives.register("mlm")
def make(config):
    return MaskedLM(config)
