"""The mark a quantized checkpoint's config carries, and the refusal of tools that cannot use it.

A quantized checkpoint's config (the saved JSON) has a top-level `quantization` entry:
{"scheme": "int8" | "int4", "group_size": N (int4; 0 for per-channel), "weights": number of
quantized weights, "source": the checkpoint it was made from}; a QLoRA fine-tune's export
(qlora.py) adds "base" (the quantized checkpoint it trained over), "adapters" ({"rank",
"targets"}: LoRA pairs stored beside their kernels) and "float_weights" (weights left float).
Loaders branch on it (fmjax.generation.loading); tools that need float weights refuse it here,
by name, with what to pass instead. Imports no jax: finetune and the HF exporter check before
they load anything.
"""
from __future__ import annotations

from typing import Any, Mapping

from fmjax.config import ConfigError

KEY = "quantization"


class QuantizedCheckpoint(ConfigError):
    """A quantized checkpoint given to a tool that needs float weights."""


def mark(config_dict: Mapping[str, Any], *, scheme: str, group_size: int, weights: int,
         source: str, **qlora: Any) -> dict:
    """A copy of `config_dict` that says it was quantized (see the module docstring); a QLoRA
    fine-tune's export adds `qlora` (qlora.py: base, adapters, float_weights)."""
    return {**config_dict, KEY: {"scheme": scheme, "group_size": int(group_size),
                                 "weights": int(weights), "source": source, **qlora}}


def quantization_of(config_dict: Mapping[str, Any]) -> dict | None:
    """The checkpoint's quantization entry, or None for a float checkpoint."""
    entry = config_dict.get(KEY) if hasattr(config_dict, "get") else None
    if not entry:
        return None
    return dict(entry)


def describe(entry: Mapping[str, Any]) -> str:
    group = f", groups of {entry['group_size']}" if entry.get("group_size") else ""
    adapters = entry.get("adapters")
    return f"{entry['scheme']}{group}" + (f", LoRA rank {adapters['rank']}" if adapters else "")


def refuse(config_dict: Mapping[str, Any], *, path: str, field: str, tool: str, fix: str) -> None:
    """QuantizedCheckpoint when `config_dict` is a quantized checkpoint's: `tool` cannot use
    its integer weights, and dequantizing them silently would hand on the rounding error as if
    it were the model. The message names `field` = `path` and the `fix`."""
    entry = quantization_of(config_dict)
    if entry is None:
        return
    source = entry.get("source") or "the checkpoint it was quantized from"
    raise QuantizedCheckpoint(
        f"{field} = {path!r} is a quantized checkpoint ({describe(entry)}, made by "
        f"fmjax.quantize from {source}); {tool} needs float weights and will not dequantize it; "
        f"{fix.format(source=source)}")
