"""Sequence classification on a pretrained backbone of any family: its pooled features
(`backbone(..., return_pooled=True)`: a decoder's final normalised hidden state of each row's
last real token, BERT's pooler, T5's mean encoder output) -> a linear head -> class logits.

Params are {"backbone": <the family's own tree, unchanged>, "head": {kernel, bias}}, so a
pretrained checkpoint drops into "backbone" as is (heads the classifier does not use, an
untied `lm_head`, BERT's MLM head, T5's decoder, stay declared to keep the tree identical)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fmjax.nn import layers
from fmjax import models

# The backbone's keyword names for (tokens, segment ids, positions[, token types]) of the text
# to classify; a family module whose inputs are named otherwise (T5: the encoder's) or that
# reads token types (BERT: segment A / B of a sentence pair) sets `pooled_input_names`.
DEFAULT_INPUT_NAMES = ("tokens_BT", "segment_ids_BT", "positions_BT")


class SequenceClassifier(nn.Module):
    """tokens [B, T] -> logits [B, C] (float32)."""
    backbone: nn.Module  # a family module (models.build); called with return_pooled=True
    num_classes: int
    dtype: Any = None  # compute dtype of the head; None = the backbone's config.model.dtype
    param_dtype: Any = None  # None = the backbone's config.model.param_dtype
    head_init_std: float = 0.02

    @nn.compact
    def __call__(self, tokens_BT, segment_ids_BT=None, positions_BT=None, token_types_BT=None, *,
                 deterministic=True):
        cfg = getattr(self.backbone, "cfg", None)
        dtype = jnp.dtype(self.dtype or cfg.dtype)
        param_dtype = jnp.dtype(self.param_dtype or cfg.param_dtype)
        names = getattr(self.backbone, "pooled_input_names", DEFAULT_INPUT_NAMES)
        inputs = dict(zip(names, (tokens_BT, segment_ids_BT, positions_BT, token_types_BT)))
        x_BD = self.backbone(**inputs, deterministic=deterministic, return_pooled=True)
        x_BD = layers.constrain(x_BD, "batch", "embed")
        logits_BC = layers.Dense((self.num_classes,), ("embed",), ("classes",), use_bias=True,
                                 init_std=self.head_init_std, dtype=dtype,
                                 param_dtype=param_dtype, name="head")(x_BD)
        return logits_BC.astype(jnp.float32)


def build_classifier(config, num_classes: int) -> tuple[SequenceClassifier, models.ModelConfig]:
    """(classifier over models.build(config)'s backbone, the resolved config.model)."""
    if num_classes < 2:
        raise ValueError(f"config.task.num_classes = {num_classes}: a classifier needs at least 2 "
                         "classes; set it, or leave it 0 to read it from the dataset")
    backbone, cfg = models.build(config)
    return SequenceClassifier(backbone, num_classes, dtype=cfg.dtype,
                              param_dtype=cfg.param_dtype), cfg


def build_saved(config, param_shapes) -> tuple[Any, models.ModelConfig]:
    """(model, resolved config.model) whose params a checkpoint of `config` holds, from the
    saved shapes ({"a/b/kernel": shape}): a classification fine-tune's tree (a `head` beside
    the `backbone`, maybe under LoRA's "model") is the classifier with the head's number of
    classes; any other tree the family's own model (models.build)."""
    for key in ("head/kernel", "model/head/kernel"):
        if key in param_shapes:
            return build_classifier(config, int(param_shapes[key][-1]))
    return models.build(config)
