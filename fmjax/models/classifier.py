"""Sequence classification on a pretrained decoder: the final normalised hidden state of each
row's LAST real token (the only position that has attended to the whole text in a causal
model) -> a linear head -> class logits.

Params are {"backbone": <the decoder's own tree, unchanged>, "head": {kernel, bias}}, so a
pretrained decoder checkpoint drops into "backbone" as is (an untied `lm_head` stays declared,
unused, to keep the tree identical)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fmjax import layers, models


def last_token_index(segment_ids_BT):
    """[B] index of the last position with segment_ids > 0 (rows are left-aligned, padding 0
    at the end; a packed row gives its last document's last token); 0 for an all-padding row."""
    positions_BT = jnp.broadcast_to(jnp.arange(segment_ids_BT.shape[1]), segment_ids_BT.shape)
    return jnp.max(jnp.where(segment_ids_BT > 0, positions_BT, 0), axis=1)


class SequenceClassifier(nn.Module):
    """tokens [B, T] -> logits [B, C] (float32)."""
    backbone: nn.Module  # a Decoder (models.build); called with return_features=True
    num_classes: int
    dtype: Any = None  # compute dtype of the head; None = the backbone's config.model.dtype
    param_dtype: Any = None  # None = the backbone's config.model.param_dtype
    head_init_std: float = 0.02

    @nn.compact
    def __call__(self, tokens_BT, segment_ids_BT=None, positions_BT=None, *, deterministic=True):
        cfg = getattr(self.backbone, "cfg", None)
        dtype = jnp.dtype(self.dtype or cfg.dtype)
        param_dtype = jnp.dtype(self.param_dtype or cfg.param_dtype)
        x_BTD = self.backbone(tokens_BT, segment_ids_BT, positions_BT,
                              deterministic=deterministic, return_features=True)
        if segment_ids_BT is None:
            last_B = jnp.full((tokens_BT.shape[0],), tokens_BT.shape[1] - 1)
        else:
            last_B = last_token_index(segment_ids_BT)
        x_BD = jnp.take_along_axis(x_BTD, last_B[:, None, None], axis=1)[:, 0]
        x_BD = layers.constrain(x_BD, "batch", "embed")
        logits_BC = layers.Dense((self.num_classes,), ("embed",), ("classes",), use_bias=True,
                                 init_std=self.head_init_std, dtype=dtype,
                                 param_dtype=param_dtype, name="head")(x_BD)
        return logits_BC.astype(jnp.float32)


def build_classifier(config, num_classes: int) -> tuple[SequenceClassifier, models.ModelConfig]:
    """(classifier over models.build(config)'s decoder, the resolved config.model)."""
    if num_classes < 2:
        raise ValueError(f"config.task.num_classes = {num_classes}: a classifier needs at least 2 "
                         "classes; set it, or leave it 0 to read it from the dataset")
    backbone, cfg = models.build(config)
    return SequenceClassifier(backbone, num_classes, dtype=cfg.dtype,
                              param_dtype=cfg.param_dtype), cfg
