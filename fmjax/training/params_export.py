"""Params-only exports of a run (`python -m fmjax.export`): no optimizer state; LoRA adapters
folded into the kernels, so the export loads without any LoRA code."""
from __future__ import annotations

import os

import jax

from fmjax.nn import lora
from fmjax.quantization import guard
from fmjax.training import checkpoint


def export(workdir: str, output: str, *, step: int | None = None,
           field: str = "--workdir") -> tuple[str, int, int]:
    """(export path, step, parameter count). A quantized checkpoint (fmjax.quantize) is refused
    (guard.QuantizedCheckpoint naming `field`): it is a params-only export already, and its
    integer weights are not what this reads."""
    if os.path.exists(output):
        raise FileExistsError(f"--output={output} exists; choose a new directory")
    source = workdir if step is None else os.path.join(checkpoint.checkpoint_dir(workdir), str(step))
    directory, _ = checkpoint.resolve_params_source(source)
    guard.refuse(checkpoint.read_source(directory)[0], path=workdir, field=field,
                 tool="fmjax.export --format=params",
                 fix="it is a params-only checkpoint already: use it as it is (fmjax.evaluate, "
                     "fmjax.generate), export it for serving with --format=stablehlo, or export "
                     "the float checkpoint it was quantized from ({source})")
    params, config_dict, tokenizer_bytes = checkpoint.read_params_to_host(directory)
    if config_dict.get("lora", {}).get("rank", 0) > 0:
        params = lora.merge_state_params(params, config_dict["lora"])
        config_dict = {**config_dict, "lora": {**config_dict["lora"], "rank": 0}}
    path = checkpoint.export_params(output, params, config_dict, tokenizer_bytes)
    step_name = os.path.basename(directory.rstrip("/"))
    return (path, int(step_name) if step_name.isdigit() else -1,
            sum(x.size for x in jax.tree.leaves(params)))
