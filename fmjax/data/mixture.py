"""Weighted mixtures of text sources, e.g.
`config.data.mixture = "c4/en:0.8,wiki40b/en:0.15,local_text:0.05"`.

Each component is any name `config.data.source` accepts (a registered source, a named or other
TFDS dataset; a version as in `c4/en:3.0.1:0.5` is fine, the weight is after the LAST colon),
read with the rest of `config.data` (so `local_text` takes `data.paths`). Weights are positive
and relative: they are normalised to shares of DOCUMENTS (the mixing happens before
tokenization, as grain's `MapDataset.mix` interleaves its inputs in exact proportions; grain
rounds the weights to integers with the smallest one scaled to 100, so shares are within 1% of
the given ones). The pipeline (`pipeline.py`) shuffles and repeats each component with its own
seed derived from (seed, component name) before mixing, so the mixed stream is a pure function
of (seed, index) and its state is one index: checkpointable like a single source.

This module only parses and names things (no grain / TFDS import), so `fmjax.distributed`
can use it to describe the data.
"""
from __future__ import annotations

import dataclasses
import math

from fmjax.config import ConfigError

FIELD = "config.data.mixture"
EXAMPLE = "c4/en:0.8,wiki40b/en:0.15,local_text:0.05"


@dataclasses.dataclass(frozen=True)
class Component:
    name: str  # what data.source would be for this component
    weight: float  # relative, > 0


def _bad(spec: str, why: str, fix: str = f"write NAME:WEIGHT pairs, e.g. "
                                             f"--config.data.mixture={EXAMPLE}"):
    raise ConfigError(f"{FIELD} = {spec!r}: {why}; {fix}")


def parse(spec: str) -> tuple[Component, ...]:
    """The components of a mixture spec, in the order given; ConfigError on a bad spec."""
    entries = [e.strip() for e in spec.split(",")]
    if not spec.strip() or not all(entries):
        _bad(spec, "an empty entry")
    components = []
    for entry in entries:
        name, sep, weight_text = entry.rpartition(":")
        name = name.strip()
        if not sep or not name:
            _bad(spec, f"{entry!r} is not NAME:WEIGHT")
        try:
            weight = float(weight_text)
        except ValueError:
            _bad(spec, f"the weight of {name!r} is {weight_text.strip()!r}, not a number")
        if not math.isfinite(weight) or weight <= 0:
            _bad(spec, f"the weight of {name!r} is {weight_text.strip()}; weights must be "
                       "positive", f"give {name!r} a weight > 0 or leave it out")
        if any(c.name == name for c in components):
            _bad(spec, f"{name!r} appears twice", "name each source once with its total weight")
        components.append(Component(name, weight))
    return tuple(components)


def shares(components) -> dict[str, float]:
    """name -> weight / sum of weights."""
    total = sum(c.weight for c in components)
    return {c.name: c.weight / total for c in components}


def component_config(config, name: str):
    """`config` reading one component: data.source = name, no mixture."""
    component = config.copy_and_resolve_references()
    component.data.source = name
    component.data.mixture = ""
    return component


def open_components(config, split: str, get_source) -> list[tuple[Component, object]]:
    """(component, `get_source(component_config, split)`) for each component of
    config.data.mixture; a component's ConfigError is re-raised naming the mixture."""
    spec = config.data.mixture
    opened = []
    for component in parse(spec):
        try:
            opened.append((component, get_source(component_config(config, component.name),
                                                 split)))
        except ConfigError as e:
            raise ConfigError(
                f"{FIELD} = {spec!r}: component {component.name!r} cannot be read: {e} (in "
                "a mixture: fix or replace that component's name)") from e
    return opened
