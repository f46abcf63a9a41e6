"""The quantized checkpoint on disk: an export's layout (PATH/{params, config, tokenizer,
integrity}; fmjax/training/checkpoint.py), params holding the integer weights and their scales
(transform.py), the config marked with its scheme (guard.py).

Checksums are fmjax.training.integrity's, taken over the int4 leaves widened to int8 (the same
values; integrity reads a leaf's bits as whole bytes, which 4-bit elements are not).
"""
from __future__ import annotations

import dataclasses
import os

from etils import epath
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from fmjax.quantization import guard, schemes, transform
from fmjax.training import checkpoint, integrity
from fmjax.training.checkpoint import CONFIG, INTEGRITY, PARAMS, STATE, TOKENIZER


@jax.jit
def _checksum_view(tree):
    return jax.tree.map(lambda x: x.astype(jnp.int8) if x.dtype == jnp.int4 else x, tree)


def _checksums(params) -> dict[str, str]:
    return integrity.tree_checksums({PARAMS: _checksum_view(params)})


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
    engine's abstract params and shardings are replaced by theirs."""
    entry = guard.quantization_of(config_dict)
    scheme = schemes.get(entry["scheme"])
    layouts, boxed = transform.layouts(engine.model, engine.model_config.seq_len, engine.mesh)
    if entry.get("weights") not in (None, len(layouts)):
        raise checkpoint.DamagedCheckpoint(
            -1, PARAMS, f"{directory}: {entry['weights']} weights were quantized but this "
            f"model reads {len(layouts)} through fmjax.quantization; quantize the float "
            "checkpoint again with this version of fmjax")
    abstract, shardings = transform.unboxed_and_shardings(
        transform.abstract_quantized(boxed, layouts, scheme, entry.get("group_size", 0)),
        engine.mesh)
    params = read(directory, abstract, shardings)
    engine = dataclasses.replace(
        engine, abstract_state=engine.abstract_state.replace(params=abstract),
        shardings=engine.shardings.replace(params=shardings))
    return engine, params
