"""Quantization schemes by name, and how a scheme lays its scales over one weight.

Both schemes are symmetric (no zero point) with absmax calibration (qwix's): per output
channel, scale = max |w| / (qmax + 1/2) and q = round(w / scale) clipped to the integer range,
so |w - q * scale| <= scale / 2 for every element.

  int8  one scale per output channel (the absmax over every contracted axis)
  int4  one scale per output channel and per group of `group_size` consecutive elements of the
        contraction (row-major over the contracted axes, as the matmul flattens them)

A new scheme is one `register(Scheme(...))` below.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from fmjax import config as config_lib
from fmjax.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Scheme:
    name: str
    qtype: str  # the stored integer dtype (a jnp dtype name)
    bits: int
    grouped: bool  # scales per group of the contraction (group_size) or per output channel
    about: str  # one line for --help and errors


SCHEMES: dict[str, Scheme] = {}


def register(scheme: Scheme) -> Scheme:
    SCHEMES[scheme.name] = scheme
    return scheme


register(Scheme("int8", "int8", 8, grouped=False, about="int8, one scale per output channel"))
register(Scheme("int4", "int4", 4, grouped=True,
                about="int4, one scale per output channel and group of --group_size inputs"))


def get(name: str) -> Scheme:
    """The scheme called `name`; an unknown name is a ConfigError with a did-you-mean."""
    if name not in SCHEMES:
        raise ConfigError(f"--scheme={name!r}: no such quantization scheme; use one of "
                          f"{', '.join(sorted(SCHEMES))}.{config_lib.did_you_mean(name, SCHEMES)}")
    return SCHEMES[name]


# ---- groups over the contraction ------------------------------------------------------------

class GroupSizeError(ConfigError):
    """A group size that does not tile some weight's contraction; says which sizes do."""


def group_tiles(shape: Sequence[int], contract_axes: Sequence[int],
                group_size: int) -> dict[int, int] | None:
    """qwix tiled_axes {axis: tile} that cut the contraction (the contracted axes flattened in
    order) into groups of `group_size` consecutive elements, or None when they cannot: the group
    must cover whole trailing contracted axes and divide the next one. Contracted axes before
    the tiled one get one scale per index (tile 1); axes the group covers whole are reduced."""
    tiles, remaining = {}, group_size
    for axis in reversed(list(contract_axes)):
        size = shape[axis]
        if remaining == 1:
            tiles[axis] = 1
        elif remaining % size == 0:
            remaining //= size  # the group covers this axis whole
        elif size % remaining == 0:
            tiles[axis], remaining = remaining, 1
        else:
            return None
    return tiles if remaining == 1 else None


def working_group_sizes(shapes: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[int]:
    """The group sizes that tile every (shape, contract_axes) in `shapes`."""
    smallest = min(_contraction(shape, axes) for shape, axes in shapes)
    return [g for g in range(1, smallest + 1)
            if all(group_tiles(shape, axes, g) is not None for shape, axes in shapes)]


def _contraction(shape, axes) -> int:
    n = 1
    for a in axes:
        n *= shape[a]
    return n


def _contraction_text(shape, axes) -> str:
    sizes = [str(shape[a]) for a in axes]
    return sizes[0] if len(sizes) == 1 else f"{'x'.join(sizes)} = {_contraction(shape, axes)}"


def check_group_size(group_size: int, named_shapes: dict[str, tuple[Any, Any]], *,
                     field: str = "--group_size", scheme_field: str = "--scheme") -> None:
    """GroupSizeError naming `field` (the flag that set group_size), the first weight it does
    not tile, and the sizes that tile all of them (named_shapes: weight name -> (shape,
    contract_axes)); the last resort named is `scheme_field`=int8."""
    if group_size < 1:
        raise GroupSizeError(f"{field}={group_size}: must be >= 1 (int4 groups of that "
                             "many contracted inputs share a scale; e.g. 128)")
    for name, (shape, axes) in named_shapes.items():
        if group_tiles(shape, axes, group_size) is None:
            ok = working_group_sizes(list(named_shapes.values()))
            shown = [g for g in ok if g >= 8] or ok
            raise GroupSizeError(
                f"{field}={group_size}: weight {name} {tuple(shape)} contracts "
                f"{_contraction_text(shape, axes)} inputs, which groups of {group_size} do not "
                f"tile; use {field} in "
                f"{{{', '.join(map(str, shown))}}} (they tile every weight of this model), or "
                f"{scheme_field}=int8 (per channel, no groups)")
