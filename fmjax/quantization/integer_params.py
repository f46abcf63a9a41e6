"""Float params -> quantized params, and the quantized params' abstract tree and shardings.

Every weight the model reads through fmjax.quantization.weights.weight (Dense kernels, Embed
tables) is replaced by two params beside each other:
  NAME        int8/int4, the float weight's shape and logical axes (so the same sharding)
  NAME_scale  float32, the weight's rank: full size on the output-channel axes (and a scanned
              stack's `layers` axis), 1 on contracted axes, or (int4) the number of groups on
              the contracted axis the groups cut; logical axes: the weight's on the output
              channels and the layer axis, None (replicated) on the contracted ones
Norm scales, biases and T5's relative-position table stay as they are (a few KB).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmjax import mesh as mesh_lib
from fmjax.quantization import schemes as schemes_lib, weights
from fmjax.quantization.schemes import Scheme
from fmjax.training import state as state_lib


@dataclasses.dataclass(frozen=True)
class Layout:
    """A quantizable leaf of the params tree."""
    key: str  # "layers/attn/query/kernel"
    shape: tuple[int, ...]  # as stored (a scanned stack's leading `layers` axis included)
    contract_axes: tuple[int, ...]  # axes of the stored leaf that its matmul contracts
    names: tuple[str | None, ...]  # logical axis names of the stored leaf


def leaf_key(path) -> str:
    """A params leaf's key path as "layers/attn/query/kernel"."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _is_box(x) -> bool:
    return isinstance(x, nn.meta.AxisMetadata)


def layouts(model, seq_len: int, mesh) -> tuple[dict[str, Layout], Any]:
    """({key: Layout} of every weight the model reads through the quantization hook, the
    model's boxed abstract float params), from one abstract init (nothing allocated)."""
    with mesh_lib.activate(mesh), weights.record_layouts() as uses:
        _, boxed = state_lib.abstract_params(model, seq_len)
    leaves = {leaf_key(p): leaf for p, leaf in
              jax.tree_util.tree_flatten_with_path(boxed, is_leaf=_is_box)[0]}
    out = {}
    for use in uses:
        key = "/".join(use.path)
        leaf = leaves.get(key)
        if leaf is None or key in out:
            continue
        value = leaf.unbox(apply_constraint=False) if _is_box(leaf) else leaf
        offset = len(value.shape) - len(use.shape)  # leading stacked axes (nn.scan)
        if offset < 0 or tuple(value.shape[offset:]) != use.shape:
            raise ValueError(f"params {key} {value.shape}: the layer reads it as {use.shape}")
        names = tuple(leaf.names) if _is_box(leaf) else (None,) * len(value.shape)
        out[key] = Layout(key, tuple(value.shape), tuple(a + offset for a in use.contract_axes),
                          names)
    return out, boxed


def check(layouts_: dict[str, Layout], scheme: Scheme, group_size: int) -> None:
    """GroupSizeError when a grouped scheme's group_size does not tile some weight."""
    if scheme.grouped:
        schemes_lib.check_group_size(group_size, {k: (l.shape, l.contract_axes)
                                                  for k, l in layouts_.items()})


def quantize_how(layout: Layout, scheme: Scheme, group_size: int) -> tuple[tuple, dict]:
    """(qwix channelwise_axes, tiled_axes) of `layout` under `scheme`."""
    channelwise = tuple(a for a in range(len(layout.shape)) if a not in layout.contract_axes)
    tiles = {}
    if scheme.grouped:
        tiles = schemes_lib.group_tiles(layout.shape, layout.contract_axes, group_size)
        if tiles is None:
            check({layout.key: layout}, scheme, group_size)
    return channelwise + tuple(a for a, t in tiles.items() if t == 1), {
        a: t for a, t in tiles.items() if t != 1}


def scale_names(layout: Layout) -> tuple[str | None, ...]:
    return tuple(None if a in layout.contract_axes else name
                 for a, name in enumerate(layout.names))


def quantize_leaf(w, layout: Layout, scheme: Scheme, group_size: int):
    """(q, scale) of one float weight (qwix.quantize: symmetric absmax, round to nearest)."""
    import qwix
    channelwise, tiled = quantize_how(layout, scheme, group_size)
    qa = qwix.quantize(w.astype(jnp.float32), jnp.dtype(scheme.qtype),
                       channelwise_axes=channelwise, tiled_axes=tiled, scale_dtype=jnp.float32)
    return qa.qvalue, qa.scale


def set_leaf(tree: dict, key: str, value) -> None:
    """tree[a][b][c] = value for key "a/b/c" (nested dicts)."""
    *parents, name = key.split("/")
    for p in parents:
        tree = tree[p]
    tree[name] = value


def mutable(tree):
    """A nested plain dict of any nested mapping (FrozenDict, dict); leaves (arrays, boxes) kept."""
    if isinstance(tree, Mapping):
        return {k: mutable(v) for k, v in tree.items()}
    return tree


def quantize_params(params, layouts_: dict[str, Layout], scheme: Scheme, group_size: int):
    """The params (a nested dict of float arrays) with every leaf in `layouts_` replaced by its
    integers and a sibling NAME_scale (see the module docstring). Runs where the leaves are."""
    check(layouts_, scheme, group_size)
    out = mutable(params)
    flat = {leaf_key(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    for key, layout in layouts_.items():
        w = flat[key]
        if tuple(w.shape) != layout.shape:
            raise ValueError(f"params {key} is {w.shape}; the model expects {layout.shape}")
        q, scale = jax.jit(quantize_leaf, static_argnums=(1, 2, 3))(w, layout, scheme, group_size)
        set_leaf(out, key, q)
        set_leaf(out, key + weights.SCALE_SUFFIX, scale)
    return out


def quantize_boxed(boxed, layouts_: dict[str, Layout], scheme: Scheme, group_size: int):
    """Boxed params (model.init's, before nn.unbox) quantized like `quantize_params`, every
    quantized leaf keeping its logical axes and its scale boxed with `scale_names`."""
    out = mutable(boxed)
    for key, layout in layouts_.items():
        leaf = get_leaf(out, key)
        q, scale = quantize_leaf(leaf.value if _is_box(leaf) else leaf, layout, scheme, group_size)
        set_leaf(out, key, leaf.replace_boxed(q) if _is_box(leaf) else q)
        set_leaf(out, key + weights.SCALE_SUFFIX, nn.LogicallyPartitioned(scale, scale_names(layout)))
    return out


def abstract_quantized(boxed, layouts_: dict[str, Layout], scheme: Scheme, group_size: int):
    """The boxed abstract params of the quantized model: `boxed` (the float model's, from
    `layouts`) with each quantized leaf's dtype changed and its scale added beside it."""
    return jax.eval_shape(lambda tree: quantize_boxed(tree, layouts_, scheme, group_size), boxed)


def get_leaf(tree, key: str):
    """tree[a][b][c] for key "a/b/c"."""
    for p in key.split("/"):
        tree = tree[p]
    return tree


def unboxed_and_shardings(boxed_q, mesh):
    """(ShapeDtypeStruct tree, NamedSharding tree) of boxed abstract params on `mesh`."""
    abstract = jax.tree.map(lambda x: x.unbox(apply_constraint=False) if _is_box(x) else x,
                            boxed_q, is_leaf=_is_box)
    return abstract, mesh_lib.tree_shardings(mesh, boxed_q)
