"""Ahead-of-time compilation of the real train step for a target that need not be attached
(fmjax/aot/targets.py: a TPU slice from libtpu's compile-only devices, or this machine). Inputs are
`jax.ShapeDtypeStruct`s with shardings, so nothing is allocated; the compiled executable's
memory analysis says whether the step fits before a pod is booked. The executable can be saved
for the launch to reuse.

`python -m fmjax.preflight` is the CLI over `run()`; fmjax/aot/fit_report.py words the verdict.
Model FLOPs come from fmjax's own count (engine.flops_per_token, fmjax/models/flops.py: the MFU
convention of training logs), never from `compiled.cost_analysis()`, which counts a scanned
layer once and undercounts fsdp-sharded weight gradients.
"""
from __future__ import annotations

import dataclasses
import math
import os
import pickle
import resource
import time
from typing import Any

import jax
import jax.numpy as jnp

from fmjax import config as config_lib, mesh as mesh_lib
from fmjax.training import engine as engine_lib
from fmjax.aot.targets import PreflightError, Target, parse_hbm_overflow, resolve_target

SAVE_FORMAT = "fmjax-aot-1"


def for_target(config, target: Target):
    """A copy of `config` as the target would run it: model.attention_impl 'auto' resolved
    for the target's platform (it looks at the backend of the compiling host otherwise)."""
    config = config.copy_and_resolve_references()
    if config.model.attention_impl == "auto":
        config.model.attention_impl = "fmjax" if target.platform == "cpu" else "xla"
    return config


def make_mesh(config, target: Target):
    """The mesh fmjax.train would build on the target (mesh.make_mesh over its devices,
    hybrid across slices)."""
    try:
        return mesh_lib.make_mesh(config, target.devices, target.processes)
    except config_lib.ConfigError as e:
        raise PreflightError(str(e)) from e
    except (NotImplementedError, ValueError) as e:
        sizes = mesh_lib.mesh_shape(config, len(target.devices), target.processes)
        raise _mesh_error(sizes, target, e) from e


def _mesh_error(sizes: dict, target: Target, error: Exception) -> PreflightError:
    """jax.make_mesh lays each mesh axis on whole dimensions of the chip grid; fmjax.train
    builds its mesh the same way, so this config would fail at launch too."""
    grid = target.tpu_slice.shape if target.tpu_slice else ()
    products = {1}
    for n in grid:
        products |= {p * n for p in products}
    hint = (f"on the {target.tpu_slice.topology} chip grid each axis must be a product of "
            f"whole grid dimensions: {', '.join(map(str, sorted(products)))}; "
            if grid else "")
    return PreflightError(f"config.mesh = {sizes}: jax.make_mesh cannot lay it on "
                          f"{target.description} ({str(error).split('. ')[0]}); {hint}e.g. "
                          "--config.mesh.fsdp=-1 "
                          "--config.mesh.data=1. fmjax.train builds its mesh the same way, so the "
                          "launch would stop here too")


def abstract_inputs(engine) -> tuple[Any, dict]:
    """(state, batch) of the train step as ShapeDtypeStructs carrying their shardings; the
    batch holds the pipeline's keys, [global batch, row length] int32."""
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         engine.abstract_state, engine.shardings)
    rows = jax.ShapeDtypeStruct((engine.config.train.global_batch_size, engine.row_length()),
                                jnp.int32, sharding=engine.batch_sharding)
    return state, {"tokens": rows, "segment_ids": rows, "positions": rows}


def sharded_bytes(tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (its shards)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += jnp.dtype(leaf.dtype).itemsize * math.prod(shard)
    return total


@dataclasses.dataclass
class Memory:
    """Per-device bytes. `required` is the peak of arguments, outputs and temporaries live at
    once (donated state counted once); on an overflow only libtpu's temporaries are known."""
    required: int
    available: int
    arguments: int | None = None
    outputs: int | None = None
    aliased: int | None = None
    temporaries: int | None = None
    code: int | None = None

    @property
    def fits(self) -> bool:
        return self.required <= self.available


@dataclasses.dataclass
class Result:
    target: Target
    config: Any  # as compiled (fmjax.aot.compile.for_target)
    mesh: dict
    num_params: int
    state_bytes: int  # params + optimizer state held by one device
    memory: Memory
    compile_s: float
    tokens_per_step: int
    model_flops_per_step: float
    compiled: Any = None  # jax.stages.Compiled; None when the step overflowed
    error: str = ""  # libtpu's RESOURCE_EXHAUSTED text when it overflowed
    host_rss_bytes: int = 0  # peak resident memory of this process after the compile

    @property
    def fits(self) -> bool:
        return self.memory.fits

    @property
    def ideal_step_s(self) -> float | None:
        """Step time at 100% MFU."""
        peak = self.target.peak_flops
        return self.model_flops_per_step / peak if peak else None

    def mfu(self, step_s: float) -> float | None:
        ideal = self.ideal_step_s
        return ideal / step_s if ideal else None


def compile_train_step(config, target: Target, *, fast: bool = False) -> Result:
    """Lowers and compiles the real jitted train step (engine.build, the same as training) on
    abstract inputs for `target`. `fast`: XLA's lowest execution-time optimisation effort
    (compiles faster; its memory peak can come out a few percent above the default's)."""
    config = for_target(config, target)
    mesh = make_mesh(config, target)
    engine = engine_lib.build(config, mesh)
    state, batch = abstract_inputs(engine)
    options = {"exec_time_optimization_effort": -1.0} if fast else None
    compiled, error = None, ""
    t0 = time.perf_counter()
    with mesh_lib.activate(mesh):
        lowered = engine.train_step.lower(state, batch)
    try:
        compiled = lowered.compile(compiler_options=options)
    except Exception as e:  # noqa: BLE001  (an HBM overflow is an answer, not a failure)
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        error = str(e).strip().splitlines()[0]
    compile_s = time.perf_counter() - t0
    memory = _memory(compiled, error, target)
    return Result(target=target, config=config, mesh=dict(mesh.shape),
                  num_params=engine.num_params(), state_bytes=sharded_bytes(state),
                  memory=memory, compile_s=compile_s, tokens_per_step=engine.tokens_per_step(),
                  model_flops_per_step=engine.flops_per_token() * engine.tokens_per_step(),
                  compiled=compiled, error=error,
                  host_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _memory(compiled, error: str, target: Target) -> Memory:
    if compiled is None:
        parsed = parse_hbm_overflow(error)
        if parsed is None:
            raise PreflightError(f"the compile ran out of memory but libtpu's message was not "
                                 f"understood: {error}")
        return Memory(required=parsed[0], available=min(parsed[1], target.memory_bytes),
                      temporaries=parsed[0])
    m = compiled.memory_analysis()
    # TPU: libtpu's heap simulation, the number it checks against HBM (temporaries are reused
    # and can add up to more). CPU and GPU allocate the whole temp buffer, and their
    # peak_memory_in_bytes leaves it out: arguments + outputs - donated + temporaries.
    peak = getattr(m, "peak_memory_in_bytes", 0) if target.platform == "tpu" else 0
    live = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    return Memory(required=int(peak) if peak else int(live + m.temp_size_in_bytes),
                  available=target.memory_bytes, arguments=m.argument_size_in_bytes,
                  outputs=m.output_size_in_bytes, aliased=m.alias_size_in_bytes,
                  temporaries=m.temp_size_in_bytes, code=m.generated_code_size_in_bytes)


def save_compiled(result: Result, path: str) -> int:
    """Writes the serialized executable (jax.experimental.serialize_executable) with what it
    was compiled for; returns the bytes written."""
    from jax.experimental import serialize_executable
    if result.compiled is None:
        raise PreflightError(f"--save_compiled={path}: nothing to save, the step does not fit")
    payload, in_tree, out_tree = serialize_executable.serialize(result.compiled)
    record = {"format": SAVE_FORMAT, "jax": jax.__version__, "target": result.target.description,
              "platform": result.target.platform, "devices": len(result.target.devices),
              "config": config_lib.to_json(result.config), "executable": payload,
              "in_tree": in_tree, "out_tree": out_tree}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(record, f)
    return os.path.getsize(path)


def read_compiled(path: str) -> dict:
    """The saved record without loading the executable (any host can read it)."""
    with open(path, "rb") as f:
        record = pickle.load(f)
    if not isinstance(record, dict) or record.get("format") != SAVE_FORMAT:
        raise PreflightError(f"{path}: not an fmjax.aot.compile file ({SAVE_FORMAT})")
    return record


def load_compiled(path: str, devices=None):
    """The saved train step as a jax.stages.Compiled on `devices` (default: all of this
    process's backend), callable as compiled(state, batch); the launch must use the same
    topology, jax and libtpu. Only load files you wrote: unpickling runs code."""
    from jax.experimental import serialize_executable
    record = read_compiled(path)
    if record["jax"] != jax.__version__:
        raise PreflightError(f"{path} was compiled with jax {record['jax']}, this is "
                             f"{jax.__version__}; compile it again")
    backend = devices[0].client if devices else record["platform"]
    return serialize_executable.deserialize_and_load(
        record["executable"], record["in_tree"], record["out_tree"], backend=backend,
        execution_devices=devices)


def run(config, topology: str, *, num_slices: int = 1, fast: bool = False,
        save_path: str = "") -> Result:
    """Pre-flight: target, compile, optional save. The CLI prints report_lines and summary."""
    target = resolve_target(topology, num_slices)
    result = compile_train_step(config, target, fast=fast)
    if save_path and result.compiled is not None:
        save_compiled(result, save_path)
    return result
