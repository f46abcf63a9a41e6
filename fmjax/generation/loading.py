"""A checkpoint loaded for generation: a training run's latest (or given) step, or an export
(fmjax.export, fmjax.convert import), with the run's own tokenizer, on all local devices."""
from __future__ import annotations

import atexit
import os
import tempfile

from fmjax import config as config_lib, mesh as mesh_lib
from fmjax.data import tokenizer_files
from fmjax.quantization import guard as quantization_guard
from fmjax.training import checkpoint, engine as engine_lib


class NoTokenizer(FileNotFoundError):
    """The checkpoint stores no tokenizer and none was given."""


def _tokenizer_file(workdir: str, tokenizer_bytes: bytes) -> str:
    """The run's own tokenizer file, or the checkpoint's tokenizer (an export) in a temporary
    file removed at exit."""
    if os.path.isfile(checkpoint.tokenizer_path(workdir)):
        return checkpoint.tokenizer_path(workdir)
    if not tokenizer_bytes:
        raise NoTokenizer(f"{workdir} stores no tokenizer (converted from a Hugging Face "
                          "directory without tokenizer files); pass --tokenizer=PATH (the "
                          "model's tokenizer.json or SentencePiece .model)")
    with tempfile.NamedTemporaryFile(suffix=".tokenizer", delete=False) as f:
        f.write(tokenizer_bytes)
    atexit.register(os.remove, f.name)
    return f.name


class _NoObjective:
    """Generation never trains: the engine gets this stand-in instead of config.objective, so a
    checkpoint whose objective does not suit its family (an import keeps the default causal_lm,
    also for t5) or cannot be built (span corruption without sentinel ids) still samples. The
    engine's train/eval steps are never called (jax.jit traces them lazily)."""


def _load_quantized(engine, directory: str, config_dict: dict):
    """(engine, params) of a quantized checkpoint (fmjax.quantize): the params hold the integer
    weights and their scales, multiplied inside the jitted model (fmjax/quantization/)."""
    from fmjax.quantization import checkpoint_io
    return checkpoint_io.load_for_engine(engine, directory, config_dict)


def _refuse_classifier(directory: str, config_dict: dict) -> None:
    """ConfigError for a classification fine-tune's checkpoint: its model ends in a label head
    (models/classifier.py), not in the language model these loaders build."""
    task = config_dict.get("task", {}).get("name", "lm")
    if task != "lm":
        raise config_lib.ConfigError(
            f"{directory} is a {task} fine-tune (config.task.name = {task!r}): its model ends "
            "in a label head, not in tokens; score it on its task with "
            "fmjax.tasks.checkpoint_eval.evaluate_checkpoint, or pass the language model it "
            f"was fine-tuned from ({config_dict.get('init_from') or 'its config.init_from'})")


def load_run(workdir: str, step: int | None = None, tokenizer_path: str | None = None):
    """(engine, params, tokenizer, step) of a training run's checkpoint or of an export (params
    only, verified against its checksums; step -1 for an export; a quantized export's params
    are its integers and scales), on all local devices."""
    source = (workdir if step is None
              else os.path.join(checkpoint.checkpoint_dir(workdir), str(step)))
    directory, _ = checkpoint.resolve_params_source(source)
    config_dict, tokenizer_bytes = checkpoint.read_source(directory)
    _refuse_classifier(directory, config_dict)
    config = config_lib.from_json_dict(config_dict)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    config.tokenizer.path = tokenizer_path or _tokenizer_file(workdir, tokenizer_bytes)
    tokenizer = tokenizer_files.ensure_tokenizer(config)
    engine = engine_lib.build(config, mesh_lib.make_mesh(config), objective=_NoObjective())
    if quantization_guard.quantization_of(config_dict):
        engine, params = _load_quantized(engine, directory, config_dict)
    else:
        params, _, _ = checkpoint.load_params(directory, engine.abstract_state.params,
                                              engine.shardings.params)
    name = os.path.basename(directory.rstrip("/"))
    return engine, params, tokenizer, int(name) if name.isdigit() else -1
