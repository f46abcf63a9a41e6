"""The quantized checkpoint on disk: an export's layout (PATH/{params, config, tokenizer,
integrity}; fmjax/training/checkpoint.py), params holding the integer weights and their scales
(integer_params.py), the config marked with its scheme (guard.py).

Checksums are fmjax.training.integrity's (it widens int4 leaves to int8: the same values).
"""
from __future__ import annotations

import dataclasses
import os

from etils import epath
import jax
import orbax.checkpoint as ocp

from fmjax.nn import lora
from fmjax.quantization import guard, integer_params, schemes
from fmjax.training import checkpoint, integrity, step as step_lib
from fmjax.training.checkpoint import CONFIG, INTEGRITY, PARAMS, STATE, TOKENIZER


def _checksums(params) -> dict[str, str]:
    return integrity.tree_checksums({PARAMS: params})


def write(path: str, params, config_dict: dict, tokenizer_bytes: bytes) -> str:
    """Writes the quantized `params` (marked `config_dict`) to the new directory `path`."""
    path = os.path.abspath(os.path.expanduser(path))
    checks = {STATE: _checksums(params), CONFIG: integrity.json_digest(config_dict),
              TOKENIZER: integrity.bytes_digest(tokenizer_bytes)}
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(path, args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardSave({PARAMS: params}),
            CONFIG: ocp.args.JsonSave(config_dict), TOKENIZER: checkpoint.FileSave(tokenizer_bytes),
            INTEGRITY: ocp.args.JsonSave(checks)}))
    return path


def read(directory: str, abstract_params, shardings):
    """The quantized params of `directory` on `shardings`, verified against their checksums
    (checkpoint.DamagedCheckpoint otherwise)."""
    root = epath.Path(directory)
    target = {PARAMS: jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_params,
        shardings)}
    restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), target)
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            restored = ckptr.restore(root / PARAMS, args=ocp.args.PyTreeRestore(
                item=target, restore_args=restore_args, partial_restore=True))
    except Exception as e:  # noqa: BLE001
        raise checkpoint.DamagedCheckpoint(-1, PARAMS, f"{directory}: {type(e).__name__}: "
                                           f"{e}") from e
    checks = ocp.JsonCheckpointHandler().restore(root / INTEGRITY)
    bad = integrity.mismatches(checks[STATE], _checksums(restored[PARAMS]))
    if bad:
        raise checkpoint.DamagedCheckpoint(
            -1, PARAMS, f"{directory}: {len(bad)} quantized params do not match their "
            f"checksums, or the model's params differ ({', '.join(bad[:3])})")
    return restored[PARAMS]


def load_for_engine(engine, directory: str, config_dict: dict):
    """(engine, params) of a quantized checkpoint for a model `engine` built from its config:
    the params are the integers and scales (no float copy of a quantized weight), and the
    engine's abstract params, shardings and eval step are replaced by theirs (its train step
    is left for float params: a quantized checkpoint trains only through QLoRA, qlora.py)."""
    entry = guard.quantization_of(config_dict)
    scheme = schemes.get(entry["scheme"])
    layouts, boxed = integer_params.layouts(engine.model, engine.model_config.seq_len, engine.mesh)
    floats = set(entry.get("float_weights", ()))  # a QLoRA export's new head (qlora.py)
    layouts = {k: layout for k, layout in layouts.items() if k not in floats}
    if entry.get("weights") not in (None, len(layouts)):
        raise checkpoint.DamagedCheckpoint(
            -1, PARAMS, f"{directory}: {entry['weights']} weights were quantized but this "
            f"model reads {len(layouts)} through fmjax.quantization; quantize the float "
            "checkpoint again with this version of fmjax")
    boxed_q = integer_params.abstract_quantized(boxed, layouts, scheme, entry.get("group_size", 0))
    if entry.get("adapters"):  # a QLoRA export: LoRA pairs beside their kernels (qlora.py)
        adapters = lora.abstract_adapters(boxed, entry["adapters"]["rank"],
                                          entry["adapters"]["targets"])
        boxed_q = lora.place_beside(boxed_q, adapters)
    abstract, shardings = integer_params.unboxed_and_shardings(boxed_q, engine.mesh)
    params = read(directory, abstract, shardings)
    eval_step = step_lib.jit_eval_step(step_lib.make_eval_step(engine.model, engine.objective),
                                       shardings, engine.batch_sharding, engine.mesh)
    engine = dataclasses.replace(
        engine, abstract_state=engine.abstract_state.replace(params=abstract),
        shardings=engine.shardings.replace(params=shardings), eval_step=eval_step)
    return engine, params
