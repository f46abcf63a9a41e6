"""Which params are pruned, and each one's matrix view. Reads the logical axis names of boxed
params (model.init's output before nn.unbox, or its jax.eval_shape: state.abstract_params).

A target is the `kernel` leaf of a Dense layer inside a transformer block: its path has a
`layers` (scanned stack) or `layer_<i>` (unrolled) component. Matrix view, as fmjax/nn/lora.py
reads kernels: a leading `layers` axis is a batch of matrices; then if the last axis is
`embed` the input (contraction) dims are the rest (attention `out` [heads, head_dim, embed],
MLP `down` [mlp, embed]), otherwise the first axis is (query/key/value [embed, heads,
head_dim], up/gate [embed, mlp])."""
from __future__ import annotations

import dataclasses
import math
import re

import flax.linen as nn
import jax

from fmjax.config import ConfigError

Path = tuple[str, ...]
_BLOCK = re.compile(r"^(layers|layer_\d+)$")


@dataclasses.dataclass(frozen=True)
class Target:
    """A prunable kernel: shape = (*batch, *in_dims, *out_dims) with len(batch) = lead."""
    path: Path
    shape: tuple[int, ...]
    lead: int  # 1 with a leading `layers` axis (scan_layers), else 0
    n_in: int  # number of input (contraction) dims after the lead axis

    @property
    def name(self) -> str:
        return "/".join(self.path)

    @property
    def in_features(self) -> int:
        """I: elements each output contracts over (the input dims flattened)."""
        return math.prod(self.shape[self.lead:self.lead + self.n_in])

    @property
    def matrix_shape(self) -> tuple[int, int, int]:
        """(matrices, I, O): the kernel seen as a batch of I x O matrices."""
        batch = math.prod(self.shape[:self.lead])
        return batch, self.in_features, math.prod(self.shape) // (batch * self.in_features)


def keys(path) -> Path:
    """A jax key path as plain strings."""
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def is_block_kernel(path: Path) -> bool:
    return len(path) >= 2 and path[-1] == "kernel" and any(_BLOCK.match(k) for k in path[:-1])


def find(boxed_params) -> dict[Path, Target]:
    """{path: Target} for the block kernels of BOXED params, in tree order. A tree with none
    (LoRA-wrapped params have them under `model/`, which still matches) raises ConfigError."""
    flat = jax.tree_util.tree_flatten_with_path(
        boxed_params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))[0]
    found = {}
    for path, box in flat:
        path = keys(path)
        if not is_block_kernel(path):
            continue
        if not isinstance(box, nn.LogicallyPartitioned):
            raise TypeError(f"pruning targets: kernel {'/'.join(path)} carries no logical axes; "
                            "pass boxed params (state.abstract_params(...)[1])")
        names, shape = tuple(box.names), tuple(box.value.shape)
        lead = 1 if names and names[0] == "layers" else 0
        axes = names[lead:]
        if len(axes) < 2 or len(names) != len(shape):
            raise ValueError(f"pruning targets: kernel {'/'.join(path)} has axes {names} and "
                             f"shape {shape}: need an input and an output axis")
        n_in = len(axes) - 1 if axes[-1] == "embed" else 1
        found[path] = Target(path, shape, lead, n_in)
    if not found:
        raise ConfigError("pruning: the model has no Dense kernels inside transformer blocks "
                          "(paths with layers/ or layer_N/); nothing to prune")
    return found
