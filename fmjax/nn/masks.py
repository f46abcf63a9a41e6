"""Attention masks over packed rows: which keys each query may see, per segment.

Shapes: B batch, T query length, S key length.
"""
from __future__ import annotations

import jax.numpy as jnp


def attention_mask(q_segment_BT, kv_segment_BS, q_pos_BT=None, kv_pos_BS=None, *,
                   causal=True, kv_prefix_BS=None, same_row=False):
    """[B, 1, T, S] bool: the key is real (segment > 0) and in the query's segment, and, when
    `causal`, at a position <= the query's or inside its segment's bidirectional prefix
    (`kv_prefix_BS` nonzero: prefix LM). `causal=False`: bidirectional (encoders) and
    cross-attention (decoder queries over encoder keys of the same segment id).

    `same_row` (causal self-attention over one row, T == S): keys after the query's index are
    hidden too, whatever the positions say. Rows packed by fmjax number each segment's tokens
    in order, so this changes nothing for them; it makes the mask lower-triangular by
    construction, which `causal_attention` relies on to skip the blocks above the diagonal."""
    same = q_segment_BT[:, :, None] == kv_segment_BS[:, None, :]
    real = kv_segment_BS[:, None, :] > 0
    if not causal:
        return (same & real)[:, None]
    visible = kv_pos_BS[:, None, :] <= q_pos_BT[:, :, None]
    if same_row:
        t, s = q_segment_BT.shape[1], kv_segment_BS.shape[1]
        visible = visible & jnp.tril(jnp.ones((t, s), bool))
    if kv_prefix_BS is not None:
        visible = visible | (kv_prefix_BS[:, None, :] > 0)
    return (same & visible & real)[:, None]
