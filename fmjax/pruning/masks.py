"""Masks over the target kernels (targets.py): True = kept. A mask tree is a nested dict with
a bool array at each target's path (the params' own nesting), so it shards like the params
(state._opt_state_shardings matches leaves by path suffix and shape).

Per matrix (a scanned stack's layers separately), scores ascending with ties to the lower flat
index (stable sort), so a mask is a pure function of the scores:
  * unstructured: the `count` lowest of the I*O scores are pruned;
  * N:M: the matrix [I, O] is cut into groups of M consecutive rows (input index) per output
    column, and the M - N lowest of each group are pruned; I must be a multiple of M.
"""
from __future__ import annotations

import math
import zlib
from typing import Callable

import jax
import jax.numpy as jnp

from fmjax.config import ConfigError
from fmjax.pruning.targets import Path, Target, keys

NM = tuple[int, int] | None  # (N, M), or None for unstructured


def prune_count(target: Target, sparsity: float) -> int:
    """Weights pruned per matrix for an unstructured `sparsity`: round(sparsity * I * O)."""
    _, i, o = target.matrix_shape
    return int(math.floor(sparsity * i * o + 0.5))


def check_pattern(targets: dict[Path, Target], nm: NM, field: str = "config.prune.pattern"):
    """N:M needs every target's contraction size I to be a multiple of M: a ConfigError that
    names the first kernel that is not."""
    if nm is None:
        return
    n, m = nm
    for target in targets.values():
        if target.in_features % m:
            raise ConfigError(
                f"{field} = '{n}:{m}': kernel {target.name} {target.shape} contracts over "
                f"{target.in_features} inputs, not a multiple of {m}; use --pattern=unstructured "
                f"(config.prune.pattern=unstructured) or an N:M whose M divides every kernel's "
                "input size")


def _ranks(score, axis: int):
    """Each element's position in a stable ascending sort along `axis`."""
    order = jnp.argsort(score, axis=axis, stable=True)
    return jnp.argsort(order, axis=axis, stable=True)


def keep_mask(score_BIO, count, nm: NM):
    """bool [B, I, O]: True where kept. `count` (unstructured; int or traced int32 scalar):
    weights pruned per matrix; ignored for N:M."""
    b, i, o = score_BIO.shape
    if nm is None:
        ranks_BN = _ranks(score_BIO.reshape(b, i * o), axis=-1)
        return (ranks_BN >= count).reshape(b, i, o)
    n, m = nm
    ranks_BGMO = _ranks(score_BIO.reshape(b, i // m, m, o), axis=2)
    return (ranks_BGMO >= m - n).reshape(b, i, o)


def flat(tree) -> dict[Path, jax.Array]:
    """{path: leaf} of a nested-dict tree."""
    return {keys(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def nest(by_path: dict[Path, jax.Array]) -> dict:
    out: dict = {}
    for path, leaf in by_path.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
    return out


def path_key(key, path: Path):
    """`key` folded with a hash of the path: adding a target never changes another's draw."""
    return jax.random.fold_in(key, zlib.crc32("/".join(path).encode()) & 0x7FFFFFFF)


def compute(params, targets: dict[Path, Target], score: Callable, counts: dict, nm: NM, key,
            previous=None) -> dict:
    """The mask tree for `params` (same nesting). `score(w, key)` is a registered method's;
    `counts[path]`: weights pruned per matrix (unstructured). With `previous` masks, weights
    already pruned score -inf: they are pruned first, so masks only grow."""
    weights = flat(params)
    old = flat(previous) if previous is not None else {}
    out = {}
    for path, target in targets.items():
        s = score(weights[path], path_key(key, path)).astype(jnp.float32)
        if path in old:
            s = jnp.where(old[path], s, -jnp.inf)
        out[path] = keep_mask(s.reshape(target.matrix_shape), counts.get(path, 0),
                              nm).reshape(target.shape)
    return nest(out)


def ones(abstract_params, targets: dict[Path, Target]) -> dict:
    """All-True masks (nothing pruned yet) for params (arrays or ShapeDtypeStructs)."""
    weights = flat(abstract_params)
    return nest({path: jnp.ones(weights[path].shape, jnp.bool_) for path in targets})


def apply(tree, masks):
    """`tree` (params, or gradients of them) with the masked-out entries of each target set to
    0; every other leaf is returned as it is."""
    by_path = flat(masks)

    def zero_pruned(path, x):
        mask = by_path.get(keys(path))
        return x if mask is None else jnp.where(mask, x, jnp.zeros((), x.dtype))
    return jax.tree_util.tree_map_with_path(zero_pruned, tree)


def zero_fraction(params, targets: dict[Path, Target]) -> float:
    """Fraction of the targets' weights that are exactly 0 (measured, not from the masks)."""
    weights = flat(params)
    zeros = sum(int(jnp.sum(weights[path] == 0)) for path in targets)
    return zeros / sum(math.prod(t.shape) for t in targets.values())
