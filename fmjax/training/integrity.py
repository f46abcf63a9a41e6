"""Content checksums that orbax does not keep: flipped bytes inside a checkpoint's data files
restore as wrong values without any error, so fmjax records what the values were.

`tree_checksums(tree)` hashes every array leaf on its devices. Each leaf's bits are read as
unsigned integers u_i (float32 -> uint32, bfloat16 -> uint16, ...) and reduced to two sums
modulo 2**32:  sum(u_i)  and  sum(u_i * w_i)  with odd weights w_i from the element's global
index. Integer sums wrap exactly in any order, so the result does not depend on the mesh or the
sharding: a checkpoint written on 8 devices verifies after restoring onto 1. One flipped bit
changes the weighted sum by 2**k * w_i, never 0 mod 2**32, and swapped elements change it too.
"""
from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np

_UINT_OF_SIZE = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}
_GOLDEN = np.uint32(2654435761)  # Knuth's multiplicative hash constant


def _leaf_sums(x):
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    if x.dtype in (jnp.int4, jnp.uint4):  # 4-bit elements are not whole bytes: widen (same values)
        x = x.astype(jnp.int8 if x.dtype == jnp.int4 else jnp.uint8)
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    u = jax.lax.bitcast_convert_type(x, _UINT_OF_SIZE[x.dtype.itemsize]).astype(jnp.uint32)
    index = jax.lax.iota(jnp.uint32, u.size).reshape(u.shape)
    weights = index * _GOLDEN | jnp.uint32(1)
    return jnp.stack([jnp.sum(u, dtype=jnp.uint32), jnp.sum(u * weights, dtype=jnp.uint32)])


@jax.jit
def _tree_sums(tree):
    return jax.tree.map(_leaf_sums, tree)


def tree_checksums(tree) -> dict[str, str]:
    """{leaf path: 16 hex digits}; identical for equal values under any sharding."""
    sums = jax.device_get(_tree_sums(tree))
    flat = jax.tree_util.tree_flatten_with_path(sums)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"):
            f"{int(s[0]):08x}{int(s[1]):08x}" for path, s in flat}


def bytes_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_digest(value) -> str:
    return bytes_digest(json.dumps(value, sort_keys=True).encode())


def mismatches(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Leaf paths whose checksum differs, or that one side lacks."""
    keys = sorted(set(expected) | set(actual))
    return [k for k in keys if expected.get(k) != actual.get(k)]


class LeafChecksum:
    """`tree_checksums`' value for one leaf, computed on the host from consecutive pieces of it
    (e.g. one layer of a stacked leaf at a time), so a checkpoint written piece by piece
    (fmjax/hf: Hugging Face imports) is checksummed without holding the whole leaf.

    update() takes the leaf's elements in row-major order, in any number of pieces."""

    BLOCK = 1 << 20  # elements hashed at a time: bounds the uint32 temporaries (4 MiB each)

    def __init__(self):
        self._index = 0
        self._sum = np.uint32(0)
        self._weighted = np.uint32(0)

    def update(self, piece) -> None:
        flat = np.ascontiguousarray(piece).reshape(-1)
        if flat.dtype == np.bool_:
            flat = flat.astype(np.uint8)
        width = {1: np.uint8, 2: np.uint16, 4: np.uint32}[flat.dtype.itemsize]
        bits = flat.view(width)
        with np.errstate(over="ignore"):
            for start in range(0, bits.size, self.BLOCK):
                u = bits[start:start + self.BLOCK].astype(np.uint32)
                index = np.arange(self._index + start, self._index + start + u.size,
                                  dtype=np.uint64).astype(np.uint32)  # wraps like jax's iota
                weights = index * _GOLDEN | np.uint32(1)
                self._sum = np.uint32(self._sum + np.sum(u, dtype=np.uint32))
                self._weighted = np.uint32(self._weighted + np.sum(u * weights, dtype=np.uint32))
        self._index += bits.size

    def hexdigest(self) -> str:
        return f"{int(self._sum):08x}{int(self._weighted):08x}"
