"""What a family converter declares (names, layouts, config fields) and how those declarations
are resolved against a concrete fmjax param tree, in both directions.

A family module (fmjax/hf/gpt2.py, llama.py, ...) registers a `Converter`: its HF config.json
fields <-> config.model, and a list of `Link`s, each tying one fmjax param (per block, for
params inside a `Stack` of blocks) to one HF tensor or to a slice of one (fused tensors such as
GPT-2's c_attn are several links to the same HF name, concatenated in declaration order).
Everything else is generic: scanned vs unrolled layouts (several stacks, each with its own
length: T5's encoder and decoder), vocabulary padding, shape checks, tensors nobody maps,
other spellings of a name (`Converter.aliases`), tied copies that must equal the tensor they
copy (`Converter.copies`), heads some checkpoints lack (`Fresh`), streaming.
"""
from __future__ import annotations

import dataclasses
import math
import re
import zlib
from typing import Any, Callable

import numpy as np

from fmjax.config import ConfigError
from fmjax.registry import Registry


class UnsupportedHFConfig(ConfigError):
    """A Hugging Face config field whose value the fmjax family cannot represent."""


class MappingError(ValueError):
    """The HF tensors and the fmjax params do not correspond (names or shapes)."""


def refuse(family: str, field: str, value: Any, why: str) -> None:
    raise UnsupportedHFConfig(
        f"config.json: {field} = {value!r}: fmjax's {family} family cannot represent it ({why}); "
        "the weights would not compute the same function, so nothing was converted")


def require(hf: dict, family: str, field: str, allowed: tuple, why: str, default=None) -> None:
    """Refuses unless hf[field] (default when absent) is one of `allowed`."""
    value = hf.get(field, default)
    if value not in allowed:
        refuse(family, field, value, why)


def require_plain_heads(cfg, name: str, *, head_dim_free: bool = False) -> None:
    """Refuses (export) an fmjax model whose attention the HF family `name` cannot hold:
    grouped-query heads, or (unless `head_dim_free`) head_dim != d_model / n_heads."""
    if cfg.n_kv_heads != cfg.n_heads or (
            not head_dim_free and cfg.head_dim * cfg.n_heads != cfg.d_model):
        raise UnsupportedHFConfig(
            f"config.model n_kv_heads = {cfg.n_kv_heads}, head_dim = {cfg.head_dim}: HF {name} "
            f"needs n_kv_heads = n_heads ({cfg.n_heads})"
            + ("" if head_dim_free else " and head_dim = d_model / n_heads"))


# ---- declarations -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Stack:
    """`length` identical blocks: modules `unrolled.format(i=i)` when config.model.scan_layers
    is False, one module `scanned` whose params carry a leading block axis when it is True.
    fmjax block i is HF block i * stride + offset: a stack scanned in groups of `stride` blocks
    (a mixture of experts every stride-th MLP, fmjax/models/transformer.py) is `stride` Stacks,
    offsets 0 ... stride - 1 (`grouped_stacks`)."""
    length: int
    unrolled: str = "layer_{i}"
    scanned: str = "layers"
    stride: int = 1
    offset: int = 0


def grouped_stacks(n_layers: int, group: int, prefix: str = "") -> list[Stack]:
    """The Stacks of `n_layers` blocks scanned in units of `group` (config.model.moe.interval
    when the model has experts, else 1), HF block order; `prefix` is the stack's parent
    module ("encoder/"). With group > 1 the last Stack holds the sparse blocks."""
    if group == 1:
        return [Stack(n_layers, unrolled=prefix + "layer_{i}", scanned=prefix + "layers")]
    return [Stack(n_layers // group, unrolled=f"{prefix}layer_{{i}}/block_{j}",
                  scanned=f"{prefix}layers/block_{j}", stride=group, offset=j)
            for j in range(group)]


@dataclasses.dataclass(frozen=True)
class Fresh:
    """Marks a link whose HF tensor some checkpoints lack (BertForMaskedLM saves no pooler,
    BertModel no MLM head). When every tensor of `group` is absent, import initialises the
    group's params as transformers does for weights missing from a checkpoint (`init`:
    normal = N(0, config.model.init_std), zeros, ones; seeded by config.seed and the param
    path) and says so; a group partly present is an error."""
    group: str
    init: str  # normal | zeros | ones

    def __post_init__(self):
        if self.init not in ("normal", "zeros", "ones"):
            raise ValueError(f"Fresh {self.group}: init {self.init!r}")

    def value(self, fm_path: str, layer: int | None, shape: tuple[int, ...], *, std: float,
              seed: int) -> np.ndarray:
        if self.init != "normal":
            return (np.zeros if self.init == "zeros" else np.ones)(shape, np.float32)
        rng = np.random.default_rng([seed, zlib.crc32(fm_path.encode()),
                                     0 if layer is None else layer + 1])
        return (std * rng.standard_normal(shape)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Link:
    """One fmjax param <-> one HF tensor (or its slice along the HF output axis).

    layout: how the fmjax array, flattened, is stored in HF
      vector  1-D (biases, norm scales)
      matrix  2-D [in, out]: embeddings, GPT-2's Conv1D
      linear  2-D [out, in]: torch.nn.Linear weights (the fmjax kernel transposed)
    n_in: leading fmjax dims that flatten into the HF input dim (query [D, H, K]: 1; out
      [H, K, D]: 2).
    vocab_axis: fmjax axis indexed by token id; fmjax may pad it (config.model.vocab_multiple),
      HF holds exactly vocab_size rows.
    fresh: the checkpoint may lack the tensor (see `Fresh`); None: it must hold it.
    experts: 0, or E when the fmjax param holds E experts along the axis after the block axis
      (a mixture of experts, fmjax/nn/moe.py) and HF keeps each in its own tensor ("{j}" in
      `hf` stands for the expert index; Mixtral's experts.{j}.w1).
    A link without `stack` is one tensor even inside a stack's names (T5's relative attention
    bias lives in block 0 only: "encoder.block.0.layer.0.SelfAttention...")."""
    fm: str  # param path under "params"; relative to the block when `stack` is set
    hf: str  # tensor name; "{i}" stands for the block index
    layout: str
    n_in: int = 1
    stack: Stack | None = None
    vocab_axis: int | None = None
    fresh: Fresh | None = None
    experts: int = 0

    def __post_init__(self):
        if self.layout not in ("vector", "matrix", "linear"):
            raise ValueError(f"Link {self.fm}: layout {self.layout!r}")

    @property
    def pack_axis(self) -> int:
        """The HF output axis: fused tensors concatenate their parts along it."""
        return 1 if self.layout == "matrix" else 0

    def cropped(self, fm_shape: tuple[int, ...], vocab_size: int) -> tuple[int, ...]:
        if self.vocab_axis is None:
            return tuple(fm_shape)
        shape = list(fm_shape)
        shape[self.vocab_axis] = vocab_size
        return tuple(shape)

    def _in_out(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The fmjax array as HF's 1-D vector or 2-D [in, out] matrix (before any transpose)."""
        if self.layout == "vector":
            return (math.prod(shape),)
        return (math.prod(shape[:self.n_in]), math.prod(shape[self.n_in:]))

    def hf_shape(self, fm_shape: tuple[int, ...], vocab_size: int) -> tuple[int, ...]:
        shape = self._in_out(self.cropped(fm_shape, vocab_size))
        return shape[::-1] if self.layout == "linear" else shape

    def to_fm(self, hf_part: np.ndarray, fm_shape: tuple[int, ...], vocab_size: int) -> np.ndarray:
        x = hf_part.T if self.layout == "linear" else hf_part
        x = np.reshape(x, self.cropped(fm_shape, vocab_size))
        if self.vocab_axis is not None and x.shape[self.vocab_axis] < fm_shape[self.vocab_axis]:
            pad = [(0, 0)] * x.ndim
            pad[self.vocab_axis] = (0, fm_shape[self.vocab_axis] - x.shape[self.vocab_axis])
            x = np.pad(x, pad)  # padded rows: never predicted, never looked up
        return np.ascontiguousarray(x)

    def to_hf(self, fm_value: np.ndarray, vocab_size: int) -> np.ndarray:
        x = fm_value
        if self.vocab_axis is not None:
            x = np.take(x, np.arange(vocab_size), axis=self.vocab_axis)
        x = np.reshape(x, self._in_out(x.shape))
        return x.T if self.layout == "linear" else x


def vector(fm: str, hf: str, **kw) -> Link:
    return Link(fm, hf, "vector", **kw)


def matrix(fm: str, hf: str, n_in: int = 1, **kw) -> Link:
    """HF stores [in, out] (embeddings; GPT-2 Conv1D)."""
    return Link(fm, hf, "matrix", n_in=n_in, **kw)


def linear(fm: str, hf: str, n_in: int = 1, **kw) -> Link:
    """HF stores [out, in] (torch.nn.Linear)."""
    return Link(fm, hf, "linear", n_in=n_in, **kw)


@dataclasses.dataclass(frozen=True)
class Converter:
    """A family's Hugging Face correspondence. `config_from_hf` returns config.model fields
    (a dotted key such as "tokenizer.extra_ids" sets another section), refusing, via
    `refuse`/`require`, any HF field whose value the family cannot compute; `config_to_hf`
    returns config.json (without token ids and dtype, which are generic)."""
    family: str  # fmjax model family (fmjax/models/NAME.py)
    model_types: tuple[str, ...]  # config.json model_type values this converter reads
    config_from_hf: Callable[[dict], dict]
    config_to_hf: Callable[[Any], dict]  # resolved ModelConfig -> config.json
    links: Callable[[Any], list[Link]]  # resolved ModelConfig -> every param's link
    # HF tensors with no fmjax counterpart that may be dropped (regexes, e.g. buffers)
    ignored: Callable[[Any], tuple[str, ...]] = lambda cfg: ()
    # {HF name a link declares: other stored names that hold it when it is absent, in order}
    aliases: Callable[[Any], dict[str, tuple[str, ...]]] = lambda cfg: {}
    # {stored HF name: the declared HF name it is a tied copy of}: read and compared bitwise
    # when present (a copy that differs means the HF model is not tied as fmjax's is: refused)
    copies: Callable[[Any], dict[str, str]] = lambda cfg: {}
    # the headless HF base model (e.g. GPT2Model) saves names without this prefix
    base_prefix: str = ""
    # SentencePiece model files the HF directory may hold (T5: spiece.model), first found wins
    tokenizer_files: tuple[str, ...] = ("tokenizer.model",)
    # transformers' class that reads an fmjax-trained SentencePiece model on export (written to
    # tokenizer_config.json, so that transformers and vLLM do not guess one from model_type);
    # None writes no tokenizer_config.json (T5 keeps spiece.model's own T5Tokenizer)
    sentencepiece_class: str | None = "LlamaTokenizer"
    # extra ids after the pieces that are span-corruption sentinels when the directory's
    # tokenizer_config.json does not say (T5: 100, <extra_id_k> = pieces + 99 - k)
    default_sentinels: int = 0


CONVERTERS: Registry[Converter] = Registry(
    "fmjax.hf", "model.family", "Hugging Face converter", ConfigError)


def register(converter: Converter) -> Converter:
    return CONVERTERS.register(converter.family, converter)


def get(family: str) -> Converter:
    return CONVERTERS.get(family)


# ---- resolution against a param tree ----------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Placement:
    """One link at one block: fmjax leaf `fm_path` (block `layer` of its leading axis when
    scanned, else the whole leaf) <-> HF tensor `hf_name`, columns/rows [start, stop) of its
    pack axis."""
    link: Link
    fm_path: str
    layer: int | None
    hf_name: str
    fm_shape: tuple[int, ...]  # the per-block (and per-expert) fmjax shape
    start: int = 0
    stop: int = 0
    expert: int | None = None  # index along the expert axis (Link.experts), else None


def _expand(link: Link, scan_layers: bool):
    """(fm path, block index or None, HF name, expert index or None) of every placement."""
    experts = range(link.experts) if link.experts else (None,)
    if link.stack is None:
        for j in experts:
            yield link.fm, None, link.hf.format(j=j), j
        return
    stack = link.stack
    for i in range(stack.length):
        hf_i = i * stack.stride + stack.offset
        for j in experts:
            if scan_layers:
                yield f"{stack.scanned}/{link.fm}", i, link.hf.format(i=hf_i, j=j), j
            else:
                yield (f"{stack.unrolled.format(i=i)}/{link.fm}", None,
                       link.hf.format(i=hf_i, j=j), j)


@dataclasses.dataclass
class Plan:
    """Every placement, grouped by HF tensor (in declaration order) and by fmjax leaf."""
    by_hf: dict[str, list[Placement]]
    by_fm: dict[str, list[Placement]]
    hf_shapes: dict[str, tuple[int, ...]]
    vocab_size: int


def plan(links: list[Link], leaf_shapes: dict[str, tuple[int, ...]], *, scan_layers: bool,
         vocab_size: int, family: str) -> Plan:
    """Resolves `links` against the fmjax leaves {path: shape}; every leaf must be linked
    exactly once per block."""
    by_hf: dict[str, list[Placement]] = {}
    for link in links:
        for fm_path, layer, hf_name, expert in _expand(link, scan_layers):
            if fm_path not in leaf_shapes:
                raise MappingError(f"fmjax/hf/{family}.py links {fm_path!r}, which the {family} "
                                   f"model does not have (its params: {sorted(leaf_shapes)})")
            shape = leaf_shapes[fm_path][1:] if layer is not None else leaf_shapes[fm_path]
            if expert is not None:
                shape = shape[1:]
            by_hf.setdefault(hf_name, []).append(
                Placement(link, fm_path, layer, hf_name, tuple(shape), expert=expert))
    hf_shapes, by_fm = {}, {}
    for hf_name, parts in by_hf.items():
        offset, shapes = 0, []
        for k, p in enumerate(parts):
            shape = p.link.hf_shape(p.fm_shape, vocab_size)
            axis = p.link.pack_axis
            parts[k] = dataclasses.replace(p, start=offset, stop=offset + shape[axis])
            offset += shape[axis]
            shapes.append(shape)
        full = list(shapes[0])
        full[parts[0].link.pack_axis] = offset
        if any(len(s) != len(full) or any(a != b for j, (a, b) in enumerate(zip(s, full))
                                          if j != parts[0].link.pack_axis) for s in shapes):
            raise MappingError(f"{hf_name}: its fused parts {[p.fm_path for p in parts]} have "
                               f"incompatible shapes {shapes}")
        hf_shapes[hf_name] = tuple(full)
        for p in parts:
            by_fm.setdefault(p.fm_path, []).append(p)
    for fm_path, shape in leaf_shapes.items():
        parts = by_fm.get(fm_path, [])
        per_block = parts[0].link.experts or 1 if parts else 1
        layers = sorted(p.layer for p in parts if p.layer is not None)
        ok = (len(parts) == per_block and parts[0].layer is None) or (
            len(parts) == shape[0] * per_block
            and layers == sorted(list(range(shape[0])) * per_block))
        if not ok:
            raise MappingError(f"fmjax param {fm_path!r} {shape} is linked {len(parts)} times in "
                               f"fmjax/hf/{family}.py; every param needs exactly one link per "
                               "block")
    return Plan(by_hf, by_fm, hf_shapes, vocab_size)


@dataclasses.dataclass
class Matched:
    """Which stored tensor holds each declared HF name (`names`; absent: a `Fresh` group the
    checkpoint lacks), the tied copies to check ({stored copy: stored original}), and the
    fresh groups."""
    names: dict[str, str]
    copies: dict[str, str]
    fresh_groups: tuple[str, ...]


def match_hf_names(plan_: Plan, stored: list[str], converter: Converter, cfg) -> Matched:
    """Finds every HF name `plan_` declares among the `stored` names: as itself, without the
    converter's `base_prefix` (the headless base model's names), or as one of its aliases
    (same two ways). Stored tensors nothing maps are an error unless they are declared copies
    or match `ignored`."""
    family, base_prefix = converter.family, converter.base_prefix
    aliases, stored_set = converter.aliases(cfg), set(stored)

    def stored_as(name: str) -> str | None:
        if name in stored_set:
            return name
        if base_prefix and name.startswith(base_prefix) and name[len(base_prefix):] in stored_set:
            return name[len(base_prefix):]
        return None

    def lookup(name: str) -> str | None:
        return next((hit for hit in map(stored_as, (name, *aliases.get(name, ()))) if hit),
                    None)

    found, missing = {}, []
    groups: dict[str, dict[str, list[str]]] = {}  # group: {"present": [...], "absent": [...]}
    for name in plan_.hf_shapes:
        fresh = plan_.by_hf[name][0].link.fresh
        hit = lookup(name)
        if hit is not None:
            found[name] = hit
        if fresh is not None:
            groups.setdefault(fresh.group, {"present": [], "absent": []})[
                "present" if hit is not None else "absent"].append(name)
        elif hit is None:
            missing.append(name)
    if missing:
        raise MappingError(f"the checkpoint lacks {len(missing)} tensors the {family} config "
                           f"needs: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for group, names in groups.items():
        if names["present"] and names["absent"]:
            raise MappingError(
                f"the checkpoint holds part of the {family} {group} ({names['present'][:3]}) "
                f"but lacks {names['absent'][:3]}: fmjax can use all of it or initialise all of "
                "it, not a mix; nothing was converted")
    fresh_groups = tuple(g for g, names in groups.items() if names["absent"])
    used = set(found.values())
    copies = {}
    for copy, original in converter.copies(cfg).items():
        stored_copy = stored_as(copy)
        if stored_copy is not None and original in found and stored_copy != found[original]:
            copies[stored_copy] = found[original]
    extra = [n for n in stored if n not in used and n not in copies
             and not any(re.search(r, n) for r in converter.ignored(cfg))]
    if extra:
        raise MappingError(
            f"{len(extra)} tensors in the checkpoint have no place in fmjax's {family} "
            f"(e.g. {extra[:5]}): the HF model has parts fmjax does not; nothing was converted")
    return Matched(found, copies, fresh_groups)
