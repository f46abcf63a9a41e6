"""Cloud TPU slice names <-> topologies: `v5p-128` is a 4x4x4 v5p slice of 64 chips on 16 hosts.

Google names a slice by its generation and a count (the `--accelerator-type` of
`gcloud compute tpus tpu-vm create`): v4, v5p and TPU7x count TensorCores (2 per chip), v5e
and v6e count chips. libtpu's compile-only topologies (`jax.experimental.topologies`) want the
chip grid instead (`v5p:4x4x4`). `parse()` takes either form and returns a `TpuSlice` with
both, plus what a launcher needs (chips, hosts). Shapes and host counts are those of Google
Cloud's TPU pages (docs.cloud.google.com/tpu/docs/v4, v5e, v5p, v6e, tpu7x; checked 2026-11):

  v5e / v6e: 2D, 1x1 .. 16x16 (256 chips), 8 chips per host (slices of 1 and 4 chips share one)
  v4 / v5p / TPU7x: 3D, 4 chips per host; 2x2x1, 2x2x2, 2x2x4, 2x4x4, then cubes of 4x4x4
  chips and their multiples (v5p: 4x4x8, 4x8x8, 8x8x8, ..., 16x16x24)

JAX sees one device per chip on v4 and v5p (the two TensorCores act as one "megacore") and two
per chip on TPU7x (its two chiplets are separate devices).
"""
from __future__ import annotations

import dataclasses
import re


class SliceError(ValueError):
    """A slice or topology name that cannot be translated; the message says what is accepted."""


@dataclasses.dataclass(frozen=True)
class Generation:
    name: str  # canonical generation, as in slice names: v4 | v5p | v5e | v6e | tpu7x
    topology_prefix: str  # what libtpu's topology names start with
    name_counts_cores: bool  # v4-32 counts TensorCores (16 chips); v5e-16 counts chips
    dims: int  # 2 (v5e, v6e) or 3
    chips_per_host: int
    devices_per_chip: int  # JAX devices per chip
    chip_config_name: str = ""  # libtpu option for this generation's usual device layout


GENERATIONS = {
    "v4": Generation("v4", "v4", True, 3, 4, 1, chip_config_name="megacore"),
    "v5p": Generation("v5p", "v5p", True, 3, 4, 1),
    "v5e": Generation("v5e", "v5e", False, 2, 8, 1),
    "v6e": Generation("v6e", "v6e", False, 2, 8, 1),
    "tpu7x": Generation("tpu7x", "tpu7x", True, 3, 4, 2),
}
# other spellings of a generation, in slice names or topologies
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v5": "v5p", "v6": "v6e", "trillium": "v6e",
           "v7x": "tpu7x", "ironwood": "tpu7x"}

SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
             256: (16, 16)}
SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4)}  # below one 4x4x4 cube

SLICE_EXAMPLES = "v5p-128, v5litepod-256, v6e-64, v4-32, tpu7x-128"
TOPOLOGY_EXAMPLES = "v5p:4x4x4, v5e:16x16, v6e:4x4, tpu7x:2x2x1"


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    generation: str  # v4 | v5p | v5e | v6e | tpu7x
    shape: tuple[int, ...]  # chip grid, e.g. (4, 4, 4)
    chips: int
    hosts: int  # TPU VM hosts (Google's tables: slices below one host count as 1)
    devices: int  # JAX devices (chips x devices per chip)
    cores: int  # TensorCores (2 per chip on v4, v5p, TPU7x)

    @property
    def name(self) -> str:
        """The accelerator-type name, e.g. v5p-128 or v5litepod-16."""
        gen = GENERATIONS[self.generation]
        prefix = "v5litepod" if self.generation == "v5e" else self.generation
        return f"{prefix}-{self.cores if gen.name_counts_cores else self.chips}"

    @property
    def topology(self) -> str:
        return "x".join(map(str, self.shape))

    @property
    def topology_name(self) -> str:
        """What `jax.experimental.topologies.get_topology_desc(topology_name=...)` takes."""
        return f"{GENERATIONS[self.generation].topology_prefix}:{self.topology}"

    @property
    def topology_kwargs(self) -> dict:
        gen = GENERATIONS[self.generation]
        return {"chip_config_name": gen.chip_config_name} if gen.chip_config_name else {}

    def describe(self) -> str:
        return (f"{self.name} = {self.topology_name}: {self.chips} chips, {self.devices} JAX "
                f"devices, {self.hosts} host{'s' if self.hosts > 1 else ''}")


def _generation(word: str, original: str) -> Generation:
    key = ALIASES.get(word.lower(), word.lower())
    if key not in GENERATIONS:
        raise SliceError(f"--topology={original!r}: unknown TPU generation {word!r}; known: "
                         f"{', '.join(GENERATIONS)} (e.g. {SLICE_EXAMPLES})")
    return GENERATIONS[key]


def _cube_like_3d(chips: int) -> tuple[int, int, int] | None:
    """The chip grid of a 3D slice: the listed shapes below one 4x4x4 cube, else the most
    cube-like A x B x C = chips with A <= B <= C, all multiples of 4 (Google's rule; the default
    topology of a chip count is the one closest to a cube). None if there is none."""
    if chips in SHAPES_3D:
        return SHAPES_3D[chips]
    if chips % 64:
        return None
    best = None
    for a in range(4, round(chips ** (1 / 3)) + 4, 4):
        for b in range(a, int((chips // a) ** 0.5) + 1, 4):
            c, rest = divmod(chips, a * b)
            if rest or c % 4 or c < b:
                continue
            if best is None or c / a < best[2] / best[0]:
                best = (a, b, c)
    return best


def from_count(generation: str, count: int) -> TpuSlice:
    """The slice `GENERATION-COUNT` (count in the generation's unit: cores or chips)."""
    gen = _generation(generation, f"{generation}-{count}")
    name = f"{generation}-{count}"
    if gen.name_counts_cores:
        if count % 2:
            raise SliceError(f"--topology={name!r}: {gen.name} slice names count TensorCores, 2 "
                             f"per chip, so the number must be even (e.g. {gen.name}-8 = 4 chips)")
        chips = count // 2
        shape = _cube_like_3d(chips) if chips >= 4 else None
        if shape is None:
            raise SliceError(f"--topology={name!r}: no {gen.name} slice has {chips} chips "
                             f"({count} TensorCores); the smallest is {gen.name}-8 (2x2x1), then "
                             f"-16, -32, -64, -128 (4x4x4) and multiples of 4x4x4 cubes")
    else:
        chips = count
        if chips not in SHAPES_2D:
            prefix = "v5litepod" if gen.name == "v5e" else gen.name
            sizes = ", ".join(f"{prefix}-{n}" for n in SHAPES_2D)
            raise SliceError(f"--topology={name!r}: {gen.name} slice names count chips; the "
                             f"slices are {sizes}")
        shape = SHAPES_2D[chips]
    return _make(gen, shape)


def _make(gen: Generation, shape: tuple[int, ...]) -> TpuSlice:
    chips = 1
    for n in shape:
        chips *= n
    return TpuSlice(generation=gen.name, shape=tuple(shape), chips=chips,
                    hosts=max(1, chips // gen.chips_per_host),
                    devices=chips * gen.devices_per_chip,
                    cores=chips * (2 if gen.name_counts_cores else 1))


def from_topology(generation: str, topology: str) -> TpuSlice:
    """The slice with chip grid `topology` ("4x4x4", "16x16")."""
    gen = _generation(generation, f"{generation}:{topology}")
    shape = tuple(int(n) for n in topology.split("x"))
    if len(shape) != gen.dims or min(shape) < 1:
        example = "x".join(["4"] * gen.dims)
        raise SliceError(f"--topology='{generation}:{topology}': {gen.name} topologies have "
                         f"{gen.dims} dimensions of at least 1, e.g. {gen.name}:{example}")
    return _make(gen, shape)


_SLICE_RE = re.compile(r"^([A-Za-z][A-Za-z0-9]*)-(\d+)$")
_TOPOLOGY_RE = re.compile(r"^([A-Za-z][A-Za-z0-9]*):(\d+(?:x\d+){1,2})$")


def parse(text: str) -> TpuSlice:
    """`v5p-128`, `v5litepod-256`, `v6e-64`, `v4-32`, `tpu7x-128` (slice names) or
    `v5p:4x4x4`, `v5:2x4x4`, `v5e:16x16`, `tpu7x:2x2x1` (topologies) -> TpuSlice.
    Raises SliceError naming the accepted forms."""
    text = text.strip()
    match = _SLICE_RE.match(text)
    if match:
        return from_count(match.group(1), int(match.group(2)))
    match = _TOPOLOGY_RE.match(text)
    if match:
        return from_topology(match.group(1), match.group(2))
    hint = ""
    loose = re.match(r"^([A-Za-z][A-Za-z0-9]*)[_ =]?(\d+)$", text)
    if loose:
        hint = f" Did you mean '{loose.group(1)}-{loose.group(2)}'?"
    raise SliceError(f"--topology={text!r} is neither a slice name (GENERATION-COUNT: "
                     f"{SLICE_EXAMPLES}) nor a topology (GENERATION:AxB[xC]: "
                     f"{TOPOLOGY_EXAMPLES}); for this machine use 'local' or 'cpu:N'.{hint}")


def table(names=("v5litepod-16", "v5litepod-256", "v6e-8", "v6e-64", "v6e-256", "v4-8", "v4-32",
                 "v5p-8", "v5p-32", "v5p-128", "v5p-256", "v5p-1024", "tpu7x-8",
                 "tpu7x-128")) -> list[TpuSlice]:
    """The slices of the README's table."""
    return [parse(n) for n in names]
