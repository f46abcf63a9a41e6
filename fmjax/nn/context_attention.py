"""Self-attention with the sequence split over the mesh (context parallelism) by all-gather:
each shard all-gathers the keys, values, segment ids, positions (and prefix mask) of the
whole row over the sequence's mesh axes, then attends with its own queries only.

Masks are per segment, built from the gathered segment ids and positions, so packed documents
never see each other across shards: causal (a key at a position <= the query's, and at an
index <= the query's in the original row, as attention_mask's `same_row`), causal with a
bidirectional prefix (prefix LM), or bidirectional (encoders).

Causal rows in zigzag order (fmjax/nn/context_parallel.py) skip work: a shard's early chunk r
(r < C) can only see chunks 0..C-1, which are the first halves of the gathered shards, so it
attends to half the keys; its late chunk 2C-1-r attends to all. Every shard does 3C of the 4C
chunk x chunk blocks (the causal minimum is 2C+1), the same on each shard.

Queries go in blocks (`query_block`) under jax.checkpoint, so one block's [B, H, Tq, S]
probabilities are in memory at a time, forward and backward (recomputed there).

The backward pass is autodiff: all_gather's transpose reduce-scatters the keys' and values'
gradients back to their shards. Shapes: B batch, T row length, C shards, H query heads, G kv
heads, K head dim; _L suffixes are a shard's local slice of T.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from fmjax import mesh as mesh_lib
from fmjax.nn import context_parallel as cp
from fmjax.nn.masks import attention_mask
from fmjax.nn.softmax_attention import attention_core

# float32 probabilities of one query block at most (per device): bounds attention's memory
PROBS_BLOCK_BYTES = 256 << 20


def query_block(queries: int, keys: int, rows: int) -> int:
    """Largest divisor of `queries` whose float32 [rows, queries, keys] probabilities fit in
    PROBS_BLOCK_BYTES (rows = batch x heads on the device); at least 1."""
    best = 1
    for n in range(1, queries + 1):
        if queries % n == 0 and rows * n * keys * 4 <= PROBS_BLOCK_BYTES:
            best = n
    return best


def _mesh_axes(logical: str, size: int, mesh):
    """LOGICAL_RULES' mesh axes for `logical` when they divide `size`, else None (whole)."""
    axes = dict(mesh_lib.LOGICAL_RULES)[logical]
    axes = tuple(a for a in ((axes,) if isinstance(axes, str) else axes or ())
                 if a in mesh.axis_names)
    return axes if axes and size % math.prod(mesh.shape[a] for a in axes) == 0 else None


def _attend(q_BLHK, k_BSHK, v_BSHK, q_rows, kv_rows, *, causal: bool, scale):
    """Softmax attention of local queries over keys, masked per segment. q_rows / kv_rows:
    (segment ids, positions, natural index, prefix mask or None) of the queries [B, L] and
    the keys [B, S]; the index arrays are [L] / [S]."""
    kv_seg_BS, kv_pos_BS, kv_idx_S, kv_prefix_BS = kv_rows

    def block(args):
        q_BNHK, q_seg_BN, q_pos_BN, q_idx_N = args
        mask_B1NS = attention_mask(q_seg_BN, kv_seg_BS, q_pos_BN, kv_pos_BS, causal=causal,
                                   kv_prefix_BS=kv_prefix_BS)
        if causal:  # a key later in the original row is hidden (same_row), prefix aside
            order_NS = kv_idx_S[None, :] <= q_idx_N[:, None]
            order_B1NS = order_NS[None, None]
            if kv_prefix_BS is not None:
                order_B1NS = order_B1NS | (kv_prefix_BS[:, None, None, :] > 0)
            mask_B1NS = mask_B1NS & order_B1NS
        return attention_core(q_BNHK, k_BSHK, v_BSHK, mask_B1NS, None, scale)

    q_seg_BL, q_pos_BL, q_idx_L, _ = q_rows
    b, length, h = q_BLHK.shape[:3]
    n = query_block(length, k_BSHK.shape[1], b * h)
    if n == length:
        return block((q_BLHK, q_seg_BL, q_pos_BL, q_idx_L))
    split = lambda x, axis: jnp.moveaxis(  # noqa: E731  [.., L, ..] -> [L/n, .., n, ..]
        x.reshape(*x.shape[:axis], length // n, n, *x.shape[axis + 1:]), axis, 0)
    out_MBNHK = jax.lax.map(jax.checkpoint(block), (split(q_BLHK, 1), split(q_seg_BL, 1),
                                                    split(q_pos_BL, 1), split(q_idx_L, 0)))
    return jnp.moveaxis(out_MBNHK, 0, 1).reshape(q_BLHK.shape[:3] + (v_BSHK.shape[-1],))


def _first_halves(x_BT_, shards: int):
    """The first half of every shard's slice of a gathered [B, T, ...]: in zigzag order,
    chunks 0..C-1 in token order."""
    b, t = x_BT_.shape[:2]
    c = t // (2 * shards)
    x = x_BT_.reshape(b, shards, 2, c, *x_BT_.shape[2:])[:, :, 0]
    return x.reshape(b, shards * c, *x_BT_.shape[2:])


def context_attention(q_BTHK, k_BTGK, v_BTGK, segment_ids_BT, positions_BT, prefix_mask_BT=None,
                      *, causal: bool, scale=None, layout: str = cp.CONTIGUOUS):
    """out [B, T, H, K] of self-attention whose length axis is split over the current mesh's
    sequence axes (cp.sequence_axes); inputs [B, T, ...] as the Attention module has them
    (`layout`: the order of the rows, cp.CONTIGUOUS or cp.ZIGZAG); see `over_sequence` for
    how they are split."""
    mesh = jax.sharding.get_abstract_mesh()
    seq_axes = cp.sequence_axes(mesh)
    shards = cp.context_size(mesh)
    t, h = q_BTHK.shape[1:3]
    if t % shards or (layout == cp.ZIGZAG and t % (2 * shards)):
        raise ValueError(f"row length {t} does not split into {shards} context shards "
                         f"({layout}); config.validate checks model.seq_len")
    index_T = jnp.asarray(cp.natural_index(t, shards, layout))
    skip = causal and prefix_mask_BT is None and layout == cp.ZIGZAG
    groups = h // k_BTGK.shape[2]

    def local(q_BLHK, k_BLGK, v_BLGK, seg_BL, pos_BL, *prefix):
        gather = lambda x: jax.lax.all_gather(x, seq_axes, axis=1, tiled=True)  # noqa: E731
        k_BSHK = jnp.repeat(gather(k_BLGK).astype(q_BLHK.dtype), groups, axis=2)
        v_BSHK = jnp.repeat(gather(v_BLGK).astype(q_BLHK.dtype), groups, axis=2)
        kv_rows = (gather(seg_BL), gather(pos_BL), index_T,
                   gather(prefix[0]) if prefix else None)
        length = q_BLHK.shape[1]
        q_idx_L = jax.lax.dynamic_slice_in_dim(index_T, jax.lax.axis_index(seq_axes) * length,
                                               length)
        q_rows = (seg_BL, pos_BL, q_idx_L, None)
        attend = lambda q, k, v, qr, kr: _attend(q, k, v, qr, kr, causal=causal,  # noqa: E731
                                                 scale=scale)
        if not skip:
            return attend(q_BLHK, k_BSHK, v_BSHK, q_rows, kv_rows)
        c = length // 2  # early chunk: the first half of the shard, sees chunks 0..C-1
        early = lambda x: x[:, :c] if x.ndim > 1 else x[:c]  # noqa: E731
        late = lambda x: x[:, c:] if x.ndim > 1 else x[c:]  # noqa: E731
        halves = lambda x: _first_halves(x, shards)  # noqa: E731
        first_rows = (halves(kv_rows[0]), halves(kv_rows[1]),
                      halves(index_T[None])[0], None)
        out_early = attend(early(q_BLHK), halves(k_BSHK), halves(v_BSHK),
                           tuple(map(early, q_rows[:3])) + (None,), first_rows)
        out_late = attend(late(q_BLHK), k_BSHK, v_BSHK, tuple(map(late, q_rows[:3])) + (None,),
                          kv_rows)
        return jnp.concatenate([out_early, out_late], axis=1)

    return over_sequence(local, q_BTHK, k_BTGK, v_BTGK, segment_ids_BT, positions_BT,
                         prefix_mask_BT)


def over_sequence(local, q_BTHK, k_BTGK, v_BTGK, segment_ids_BT, positions_BT,
                  prefix_mask_BT=None):
    """local(q, k, v, segment ids, positions[, prefix mask]) -> out [B, L, H, K] run on each
    device's slice in a jax.shard_map over the current mesh: every input split along its batch
    (LOGICAL_RULES' `batch` axes, where they divide it) and its length (the sequence's axes);
    q, k, v also along their heads when the `heads` and `kv_heads` axes are the same and divide
    both (query head j meets its kv head on the same device), else whole."""
    mesh = jax.sharding.get_abstract_mesh()
    seq_axes = cp.sequence_axes(mesh)
    b, _, h = q_BTHK.shape[:3]
    g = k_BTGK.shape[2]
    batch = _mesh_axes("batch", b, mesh)
    heads, kv_heads = _mesh_axes("heads", h, mesh), _mesh_axes("kv_heads", g, mesh)
    if heads is None or kv_heads is None or heads != kv_heads:
        heads = None
    seq = seq_axes if len(seq_axes) > 1 else seq_axes[0]
    per_head = P(batch, seq, heads, None)
    per_row = P(batch, seq)
    prefix = () if prefix_mask_BT is None else (prefix_mask_BT,)
    return jax.shard_map(local, mesh=mesh,
                         in_specs=(per_head,) * 3 + (per_row,) * (2 + len(prefix)),
                         out_specs=per_head, check_vma=False)(
        q_BTHK, k_BTGK, v_BTGK, segment_ids_BT, positions_BT, *prefix)
