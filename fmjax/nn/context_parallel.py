"""Context parallelism's row layout: which mesh axes split the sequence, and the causal
load-balancing ("zigzag") order of a row's tokens.

The sequence (logical axis `length`) is split over the mesh axes fmjax/mesh.py's LOGICAL_RULES
give it (mesh.context); C = their product. A causal decoder does not keep its rows in token
order: cut into 2C equal chunks, context shard r holds chunks r and 2C-1-r (an early and a
late one), so every shard has the same causal attention work (fmjax/nn/context_attention.py
skips the keys an early chunk cannot see). Segment ids, positions and prefix masks are
permuted with their tokens, so masks, RoPE and learned positions see each token's own values.

Contract: fmjax/models/decoder.py permutes its inputs with `to_zigzag`, runs its blocks inside
`zigzag_rows()` and restores token order with `from_zigzag` before the output layer; attention
reads `row_layout()` to know which order its rows are in. Any other model keeps token order
(the default "contiguous" layout), which context attention handles too, without the saving.

Shapes: B batch, T length, C context shards, c = T / (2C) tokens per chunk.
"""
from __future__ import annotations

import contextlib
import contextvars
import math

import jax
import jax.numpy as jnp
import numpy as np

from fmjax import mesh as mesh_lib
from fmjax.config import CONTEXT_ATTENTION_IMPLS

CONTIGUOUS, ZIGZAG = "contiguous", "zigzag"
IMPLEMENTATIONS = CONTEXT_ATTENTION_IMPLS  # attention_impl values that split rows
_LAYOUT = contextvars.ContextVar("fmjax_row_layout", default=CONTIGUOUS)


def sequence_axes(mesh=None) -> tuple[str, ...]:
    """The mesh axes of size > 1 that LOGICAL_RULES gives `length` (default: the current
    abstract mesh); () when the sequence is not split."""
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    if mesh.empty:
        return ()
    axes = dict(mesh_lib.LOGICAL_RULES)["length"]
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return tuple(a for a in axes if a in mesh.axis_names and mesh.shape[a] > 1)


def context_size(mesh=None) -> int:
    """C: how many shards the sequence is split into on `mesh` (default: the current one)."""
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    return math.prod(mesh.shape[a] for a in sequence_axes(mesh))


def splits(length: int) -> bool:
    """Whether attention over rows of `length` runs context-parallel on the current mesh: the
    sequence is split and `length` divides evenly (config.validate checks model.seq_len;
    other lengths, e.g. an evaluation's, take the whole-row attention path, which XLA
    partitions by gathering)."""
    shards = context_size()
    return shards > 1 and length % shards == 0


def zigzag_shards(length: int) -> int:
    """C when a causal model should lay rows of `length` out in zigzag order (the sequence is
    split and 2C divides `length`), else 0 (token order)."""
    shards = context_size()
    return shards if shards > 1 and length % (2 * shards) == 0 else 0


@contextlib.contextmanager
def zigzag_rows():
    """While tracing inside: the rows attention sees are in zigzag order (see module doc)."""
    token = _LAYOUT.set(ZIGZAG)
    try:
        yield
    finally:
        _LAYOUT.reset(token)


def row_layout() -> str:
    """CONTIGUOUS (token order) or ZIGZAG: the order of the rows being traced."""
    return _LAYOUT.get()


def zigzag_chunks(shards: int) -> np.ndarray:
    """[2C] natural chunk index of each stored chunk: shard r stores chunks r, 2C-1-r."""
    r = np.arange(shards)
    return np.stack([r, 2 * shards - 1 - r], axis=1).reshape(-1)


def natural_index(length: int, shards: int, layout: str) -> np.ndarray:
    """int32 [T]: the token index (in the original row) of each stored position."""
    if layout == CONTIGUOUS:
        return np.arange(length, dtype=np.int32)
    c = length // (2 * shards)
    chunks = zigzag_chunks(shards)
    return (chunks[:, None] * c + np.arange(c)[None, :]).reshape(-1).astype(np.int32)


def _reorder_chunks(x_BT_, shards: int, chunk_order: np.ndarray):
    """x [B, T, ...] with its T axis cut into 2C chunks and stored in `chunk_order`."""
    b, t = x_BT_.shape[:2]
    if t % (2 * shards):
        raise ValueError(f"row length {t} is not divisible by 2 x {shards} context shards "
                         "(config.validate checks model.seq_len)")
    x_BNc_ = x_BT_.reshape(b, 2 * shards, t // (2 * shards), *x_BT_.shape[2:])
    return jnp.take(x_BNc_, jnp.asarray(chunk_order), axis=1).reshape(x_BT_.shape)


def to_zigzag(x_BT_, shards: int):
    """Token order -> zigzag order along axis 1 (tokens, segment ids, positions, masks...)."""
    return _reorder_chunks(x_BT_, shards, zigzag_chunks(shards))


def from_zigzag(x_BT_, shards: int):
    """Zigzag order -> token order along axis 1 (the inverse of `to_zigzag`)."""
    return _reorder_chunks(x_BT_, shards, np.argsort(zigzag_chunks(shards)))
