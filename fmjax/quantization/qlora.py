"""Fine-tuning over a quantized checkpoint (QLoRA; Dettmers et al. 2023, arXiv:2305.14314):
config.init_from names a checkpoint made by `python -m fmjax.quantize`, and config.lora.rank > 0.

The base stays as stored: its integers and scales are the params, frozen, restored with their
checksums and multiplied out inside each matmul by the weights hook (weights.py), so no float
copy of a quantized weight exists outside the compiled step. What trains is float32: the LoRA
adapters, which sit beside each quantized kernel (fmjax/nn/lora.py: `kernel_lora_a`,
`kernel_lora_b`; the hook adds A @ B to the dequantized kernel), and a task's new head
(classification), which is not quantized.

The best/ export is again a quantized checkpoint: the base as loaded, each adapter pair beside
its kernel (B times alpha / rank), the head in float. Its config's quantization entry says so
("adapters": rank and targets; "float_weights": the weights read in float), which is all a
loader needs (checkpoint_io.load_for_engine): fmjax.evaluate, generate, export --format=stablehlo
and tasks/checkpoint_eval read it with no LoRA code, and never dequantize it into float params.
"""
from __future__ import annotations

import jax

from fmjax.config import ConfigError
from fmjax.nn import lora
from fmjax.quantization import checkpoint_io, guard, integer_params, schemes
from fmjax.quantization.schemes import Scheme
from fmjax.quantization.integer_params import Layout


class QuantizedBaseModel:
    """A Linen model whose params are a quantized checkpoint's: `init` returns the wrapped
    model's boxed params with each weight in `layouts` quantized (integer_params.quantize_boxed: the
    integers keep the weight's logical axes, so its sharding); `apply` and every other
    attribute are the wrapped model's (the weights hook dequantizes)."""

    def __init__(self, model, layouts: dict[str, Layout], float_weights: tuple[str, ...],
                 scheme: Scheme, group_size: int):
        self.model, self.layouts, self.float_weights = model, layouts, float_weights
        self.scheme, self.group_size = scheme, group_size

    def __getattr__(self, name):
        return getattr(self.__dict__["model"], name)

    def init(self, *args, **kwargs):
        variables = dict(self.model.init(*args, **kwargs))
        return {**variables, "params": integer_params.quantize_boxed(
            variables["params"], self.layouts, self.scheme, self.group_size)}

    def apply(self, variables, *args, **kwargs):
        return self.model.apply(variables, *args, **kwargs)


def check(config, entry: dict) -> None:
    """ConfigError, before anything is built, for what cannot train over a quantized base."""
    init_from = config.init_from
    what = f"config.init_from = {init_from!r} is a quantized checkpoint ({guard.describe(entry)})"
    if config.lora.rank <= 0:
        raise guard.QuantizedCheckpoint(
            f"config.lora.rank = {config.lora.rank}: {what}, whose integer weights cannot "
            "train and are never dequantized into float ones; set --config.lora.rank=8 (say) "
            "to train LoRA adapters over the frozen quantized base (QLoRA), or set "
            f"--config.init_from to the float checkpoint ({entry.get('source')})")
    if entry.get("adapters"):
        raise ConfigError(
            f"config.init_from = {init_from!r}: a quantized checkpoint with LoRA adapters (a "
            "QLoRA fine-tune's best/); fine-tune from the quantized checkpoint it started from "
            f"({entry.get('base') or entry.get('source')})")
    if config.qat.scheme:
        raise ConfigError(
            f"config.qat.scheme = {config.qat.scheme!r}: {what}, already on its integer grid; "
            "unset --config.qat.scheme (fake quantization is for float weights)")
    if config.prune.target_sparsity > 0:
        raise ConfigError(
            f"config.prune.target_sparsity = {config.prune.target_sparsity}: {what}, which stays "
            "frozen; "
            "prune the float checkpoint (python -m fmjax.prune), then quantize it")


def wrap(entry: dict, model, seq_len: int, mesh, backbone_path: tuple[str, ...]
         ) -> QuantizedBaseModel:
    """`model` over the quantized base of `entry`: every weight it reads under `backbone_path`
    (the pretrained part) quantized as the checkpoint stores it; the rest (a new head) float."""
    layouts, _ = integer_params.layouts(model, seq_len, mesh)
    prefix = "/".join(backbone_path)
    inside = lambda key: not prefix or key.startswith(prefix + "/")  # noqa: E731
    return QuantizedBaseModel(
        model, {k: l for k, l in layouts.items() if inside(k)},
        tuple(sorted(k for k in layouts if not inside(k))), schemes.get(entry["scheme"]),
        int(entry.get("group_size", 0)))


def load_base(directory: str, abstract_params, shardings):
    """The quantized base's params from `directory` on `shardings` (checksums verified)."""
    return checkpoint_io.read(directory, abstract_params, shardings)


def export(path: str, state_params, model: QuantizedBaseModel, config_dict: dict, entry: dict,
           base: str, tokenizer_bytes: bytes) -> None:
    """Writes the best/ export (module docstring) of a QLoRA run's state params
    {"model": quantized base + head, "lora": adapters} to the new directory `path`."""
    lora_config = config_dict["lora"]
    params = lora.merge_state_params(state_params, lora_config)  # adapters beside the kernels
    config_dict = {**config_dict, "lora": {**lora_config, "rank": 0}}
    marked = guard.mark(
        config_dict, scheme=model.scheme.name, group_size=model.group_size,
        weights=len(model.layouts), source=entry.get("source", ""), base=base,
        adapters={"rank": int(lora_config["rank"]),
                  "targets": list(lora.parse_targets(lora_config["targets"]))},
        float_weights=list(model.float_weights))
    checkpoint_io.write(path, jax.device_get(params), marked, tokenizer_bytes)
