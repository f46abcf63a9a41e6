"""A fine-tuned checkpoint scored on its own task: the `best/` export of a fine-tune (or any of
its step directories), float or quantized by `python -m fmjax.quantize`, evaluated exactly as
the fine-tune stage evaluates (the task's `evaluate`: classification accuracy / F1 on its
validation split, lm loss), on the mesh of all local devices.

The task, its data and its model come from the config saved with the checkpoint; the data
directory can be moved (`tfds_data_dir`). A quantized checkpoint's params are its integers and
scales (fmjax.quantization.checkpoint_io), dequantized inside the jitted model, so its figures
are the quantized model's. The float weights are scored as they are: a quantization-aware run's
float export (config.qat) is scored without fake quantization.
"""
from __future__ import annotations

import os
import tempfile

from fmjax import config as config_lib, mesh as mesh_lib, tasks
from fmjax.data import tokenizer_files
from fmjax.quantization import guard
from fmjax.training import checkpoint, engine as engine_lib


def evaluate_checkpoint(source: str, *, tfds_data_dir: str | None = None) -> dict:
    """The task metrics (`eval_*`) of checkpoint `source` (an export, a step directory or a
    workdir's latest), plus "quantization": the scheme or "" for float weights."""
    directory, _ = checkpoint.resolve_params_source(source)
    config_dict, tokenizer_bytes = checkpoint.read_source(directory)
    config = config_lib.from_json_dict(
        {k: v for k, v in config_dict.items() if k != guard.KEY})
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    if config.lora.rank > 0:
        raise config_lib.ConfigError(
            f"{source}: a LoRA run's step directory (config.lora.rank = {config.lora.rank}); "
            "score its best/ export (adapters merged) or python -m fmjax.export's output")
    config.qat.scheme = ""  # score the weights as stored (see the module docstring)
    if tfds_data_dir:
        config.data.tfds_data_dir = tfds_data_dir
    with tempfile.TemporaryDirectory() as tmp:  # the tokenizer file, while the task reads
        config.tokenizer.path = os.path.join(tmp, "tokenizer")
        with open(config.tokenizer.path, "wb") as f:
            f.write(tokenizer_bytes)
        task = tasks.get(config)(config, tokenizer_files.open_tokenizer(config.tokenizer.path,
                                                                        config))
        engine = engine_lib.build(config, mesh_lib.make_mesh(config), model=task.model,
                                  model_config=task.model_config, objective=task.objective)
        entry = guard.quantization_of(config_dict)
        if entry:
            from fmjax.quantization import checkpoint_io
            engine, params = checkpoint_io.load_for_engine(engine, directory, config_dict)
        else:
            params, _, _ = checkpoint.load_params(directory, engine.abstract_state.params,
                                                  engine.shardings.params)
        metrics = task.evaluate(engine, params, lambda: False)
    return {**metrics, "quantization": guard.describe(entry) if entry else ""}
