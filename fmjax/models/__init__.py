"""Model families register themselves here by name; `build(config)` looks one up.

A new family is one new file `fmjax/models/NAME.py` that calls `register("NAME")`; it is
imported on first use of that name, so there is no central list to edit.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn

from fmjax.config import ConfigError
from fmjax.nn.moe import MoeConfig
from fmjax.registry import Registry


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """config.model with every derived default resolved; hashable, so modules can hold it."""
    family: str
    vocab_size: int
    padded_vocab_size: int
    seq_len: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    max_positions: int
    norm_eps: float
    rope_theta: float
    tie_embeddings: bool
    dropout: float
    dtype: str
    param_dtype: str
    scan_layers: bool
    remat_policy: str
    attention_impl: str
    init_std: float
    n_decoder_layers: int = 0  # encoder-decoder: decoder blocks (resolved: never 0)
    relative_buckets: int = 32  # T5 relative-position buckets
    relative_max_distance: int = 128  # T5: distances from here on share the last bucket
    type_vocab_size: int = 2  # BERT token-type (segment A/B) embeddings
    moe: MoeConfig = MoeConfig()  # mixture of experts (fmjax/nn/moe.py); num_experts 0 = dense


KINDS = ("decoder", "encoder", "encoder_decoder")  # call signatures: see each kind's module


@dataclasses.dataclass(frozen=True)
class Family:
    """How to fill a family's defaults and build its Linen module from a ModelConfig."""
    name: str
    make_module: Callable[[ModelConfig], nn.Module]
    default_d_ff: Callable[[int], int]  # d_model -> MLP width when config.model.d_ff == 0
    default_tie_embeddings: bool
    position_params: Callable[[ModelConfig], int] = lambda cfg: 0  # excluded from 6N in MFU
    kind: str = "decoder"  # decoder | encoder | encoder_decoder (models/decoder.py, bert.py, t5.py)
    pretrain_objective: str = "causal_lm"  # config.objective of imported checkpoints (fmjax/hf)
    default_init_std: float = 0.02  # config.model.init_std when it is 0
    # top-level param names outside the published parameter count (e.g. BERT's MLM head):
    # fmjax.info reports them apart from `params`
    uncounted_params: tuple[str, ...] = ()
    # (ModelConfig, {model input name: shape}) -> model FLOPs of one row, for families whose
    # cost is not 6N + 12LdT per token (encoder-decoder); None = that formula
    # (fmjax/models/flops.py)
    row_flops: Callable[[ModelConfig, dict], float] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Family {self.name!r}: kind = {self.kind!r}; use one of {KINDS}")


FAMILIES: Registry[Family] = Registry(
    "fmjax.models", "model.family", "model family", ConfigError)


def register(family: Family) -> Family:
    return FAMILIES.register(family.name, family)


def get_family(name: str) -> Family:
    return FAMILIES.get(name)


def resolve(model_config) -> ModelConfig:
    """config.model with the family's defaults filled in; ConfigError (naming the field and
    the fix) for a value the layers cannot run, before anything compiles."""
    from fmjax.nn import attention, layers
    m = model_config
    family = get_family(m.family)
    layers.check_remat_policy(m.remat_policy)
    attention.check_implementation(m.attention_impl, m.seq_len)
    multiple = max(1, m.vocab_multiple)
    tie = m.tie_embeddings
    d_ff = m.d_ff or family.default_d_ff(m.d_model)
    return ModelConfig(
        family=m.family, vocab_size=m.vocab_size,
        padded_vocab_size=-(-m.vocab_size // multiple) * multiple, seq_len=m.seq_len,
        d_model=m.d_model, n_layers=m.n_layers, n_heads=m.n_heads,
        n_kv_heads=m.n_kv_heads or m.n_heads, head_dim=m.head_dim or m.d_model // m.n_heads,
        d_ff=d_ff, max_positions=m.max_positions or m.seq_len,
        norm_eps=m.norm_eps, rope_theta=m.rope_theta,
        tie_embeddings=family.default_tie_embeddings if tie is None else bool(tie),
        dropout=m.dropout, dtype=m.dtype, param_dtype=m.param_dtype, scan_layers=m.scan_layers,
        remat_policy=m.remat_policy, attention_impl=m.attention_impl,
        init_std=m.init_std or family.default_init_std,
        n_decoder_layers=m.n_decoder_layers or m.n_layers, relative_buckets=m.relative_buckets,
        relative_max_distance=m.relative_max_distance, type_vocab_size=m.type_vocab_size,
        moe=MoeConfig.from_config(m.moe, d_ff))


def build(config) -> tuple[nn.Module, ModelConfig]:
    cfg = resolve(config.model)
    return get_family(cfg.family).make_module(cfg), cfg
