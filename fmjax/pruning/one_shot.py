"""One-shot pruning of a loaded checkpoint into a params-only export (the format of
fmjax.export: generate, evaluate and finetune load it as any export). The library behind
`python -m fmjax.prune`."""
from __future__ import annotations

import dataclasses
import math
import os

import jax

from fmjax import config as config_lib
from fmjax.nn import lora
from fmjax.pruning import masks as masks_lib, methods, targets as targets_lib
from fmjax.pruning.hook import targets_of
from fmjax.training import checkpoint


@dataclasses.dataclass
class Summary:
    method: str
    pattern: str
    sparsity: float  # measured: zero fraction of the target kernels
    pruned_params: int  # weights in the target kernels
    total_params: int  # every parameter of the export
    per_tensor: dict  # {kernel path: measured zero fraction}

    def text(self) -> str:
        values = list(self.per_tensor.values())
        return (f"pruned ({self.method}, {self.pattern}): {self.sparsity:.4f} of the "
                f"{self.pruned_params:,} weights of {len(values)} block kernels are 0 (per "
                f"kernel {min(values):.4f} to {max(values):.4f}); they hold "
                f"{self.pruned_params / self.total_params:.1%} of the {self.total_params:,} "
                "parameters (embeddings, norms, biases and heads stay dense)")


def merged_params(engine, params, config_dict: dict):
    """(params, targets, config dict) with LoRA adapters folded into the kernels, so that the
    zeros are the export's (adapters added after pruning would fill them in)."""
    targets = targets_of(engine)
    if config_dict.get("lora", {}).get("rank", 0) > 0:
        params = lora.merge_state_params(params, config_dict["lora"])
        config_dict = {**config_dict, "lora": {**config_dict["lora"], "rank": 0}}
        targets = {path[1:]: dataclasses.replace(t, path=path[1:])
                   for path, t in targets.items() if path[0] == lora.MODEL_KEY}
    return params, targets, config_dict


def resolve(method: str, sparsity: float | None, pattern: str):
    """(score function, sparsity, (N, M) or None) of a one-shot request; a bad value is a
    ConfigError naming config.prune.* (the CLI names its flags): sparsity outside [0, 1), an
    N:M sparsity other than 1 - N/M, an unknown pattern or method."""
    score = methods.get(method)
    nm = config_lib.parse_pattern(pattern)
    if nm is not None:
        implied = 1 - nm[0] / nm[1]
        sparsity = implied if sparsity is None else sparsity
        if abs(sparsity - implied) > 1e-9:
            raise config_lib.ConfigError(
                f"config.prune.target_sparsity = {sparsity}: config.prune.pattern = {pattern!r} "
                f"keeps {nm[0]} of every {nm[1]} weights; leave the sparsity out or set it to "
                f"{implied:g}")
    if sparsity is None:
        raise config_lib.ConfigError(
            f"config.prune.target_sparsity = None: unstructured pruning needs a sparsity; set "
            "it to 0.5, say")
    if not 0.0 <= sparsity < 1.0:
        raise config_lib.ConfigError(
            f"config.prune.target_sparsity = {sparsity}: must be in [0, 1); set it to 0.5, say")
    return score, sparsity, nm


def prune(params, targets: dict, *, method: str, sparsity: float | None, pattern: str,
          seed: int = 0):
    """(pruned params, masks): exactly round(sparsity * size) weights of each target matrix
    (unstructured) or M - N of every M along its contraction axis (N:M) set to 0."""
    score, sparsity, nm = resolve(method, sparsity, pattern)
    masks_lib.check_pattern(targets, nm)
    counts = {path: masks_lib.prune_count(t, sparsity) for path, t in targets.items()}
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 0x9A7E)
    masks = masks_lib.compute(params, targets, score, counts, nm, key)
    return masks_lib.apply(params, masks), masks


def export(source: str, output: str, engine, params, *, method: str, sparsity: float | None,
           pattern: str, seed: int = 0) -> tuple[str, Summary]:
    """Prunes `params` (loaded from `source`: generation.loading.load_run's) and writes them
    with the source's config and tokenizer to `output` (must not exist)."""
    if os.path.exists(output):
        raise FileExistsError(f"--output={output} exists; choose a new directory")
    directory, _ = checkpoint.resolve_params_source(source)
    config_dict, tokenizer_bytes = checkpoint.read_source(directory)
    params, targets, config_dict = merged_params(engine, params, config_dict)
    pruned, _ = prune(params, targets, method=method, sparsity=sparsity, pattern=pattern,
                      seed=seed)
    path = checkpoint.export_params(output, pruned, config_dict, tokenizer_bytes)
    flat = masks_lib.flat(pruned)
    per_tensor = {t.name: masks_lib.zero_fraction(pruned, {p: t}) for p, t in targets.items()}
    size = sum(math.prod(t.shape) for t in targets.values())
    summary = Summary(method, pattern, masks_lib.zero_fraction(pruned, targets), size,
                      sum(x.size for x in flat.values()), per_tensor)
    return path, summary
