"""The pre-flight verdict in words and JSON: memory per device against the device's, model
FLOPs per step and the step time each MFU means, and, when the step does not fit, the
overrides that would lower its peak (remat policy, fsdp, microbatches, batch, a larger slice).
"""
from __future__ import annotations

import json
import math

from fmjax.aot import tpu_slices
from fmjax.aot.compile import Result
from fmjax.aot.targets import GIB, Target
from fmjax.config import BATCH_MESH_AXES

TIGHT = 0.9  # a peak above this fraction of the device's memory is reported as tight
ROOM = 0.85  # the fraction of HBM the suggested knobs aim for


def knobs(result: Result) -> list[str]:
    """Overrides that would lower the per-device peak, most effective first, with the numbers
    that make each one worth trying."""
    c, memory, out = result.config, result.memory, []
    sizes = result.mesh
    devices = len(result.target.devices)
    state_gib = result.state_bytes / GIB
    if sizes["fsdp"] * sizes["tensor"] < devices and result.state_bytes > 0.25 * memory.available:
        out.append(f"--config.mesh.fsdp=-1 --config.mesh.data=1: shard params and optimizer "
                   f"state over all {devices} devices ({state_gib:.1f} GiB per device now, "
                   f"~{state_gib * sizes['fsdp'] * sizes['tensor'] / devices:.1f} GiB then)")
    if c.model.remat_policy != "full":
        out.append(f"--config.model.remat_policy=full: recompute each layer's activations in "
                   f"the backward pass (now {c.model.remat_policy!r})")
    m, batch = c.train.microbatches, c.train.global_batch_size
    rows = batch // (math.prod(sizes[a] for a in BATCH_MESH_AXES) * m)
    fixed = 2 * result.state_bytes  # state and gradients do not shrink with the rows
    budget = ROOM * memory.available - fixed
    if rows > 1 and budget > 0:  # activations scale with the rows of one pass: a rough split
        k = 2 ** math.ceil(math.log2(max(2.0, (memory.required - fixed) / budget)))
        k = min(k, rows)
        estimate = (fixed + (memory.required - fixed) / k) / GIB
        out.append(f"--config.train.microbatches={m * k}: the same global batch in {m * k} "
                   f"passes ({rows} rows per device per pass now, {rows // k} then; peak about "
                   f"{estimate:.0f} GiB if activations scale with the rows)")
        out.append(f"--config.train.global_batch_size={batch // k}: {k}x smaller batches "
                   "(changes the recipe)")
    out.append(_more_devices(result.target))
    return out


def _more_devices(target: Target) -> str:
    tpu = target.tpu_slice
    if tpu is None:
        return "more devices: they divide the state (with fsdp) and the batch"
    gen = tpu_slices.GENERATIONS[tpu.generation]
    count = tpu.cores if gen.name_counts_cores else tpu.chips
    try:
        bigger = f" ({tpu_slices.from_count(tpu.generation, 2 * count).name})"
    except tpu_slices.SliceError:
        bigger = ""
    return f"a larger slice{bigger}: more chips divide the state and the batch"


def summary(result: Result, step_s: float | None = None) -> dict:
    m = result.memory
    gib = lambda v: None if v is None else round(v / GIB, 3)  # noqa: E731
    out = {"fits": result.fits, "target": result.target.description,
           "topology_devices": len(result.target.devices), "chips": result.target.chips,
           "processes": result.target.processes, "num_slices": result.target.num_slices,
           "mesh": result.mesh, "params": result.num_params,
           "memory_gib": {"required": gib(m.required), "available": gib(m.available),
                          "arguments": gib(m.arguments), "outputs": gib(m.outputs),
                          "aliased": gib(m.aliased), "temporaries": gib(m.temporaries),
                          "code": gib(m.code), "state": gib(result.state_bytes)},
           "memory_source": result.target.memory_source,
           "over_gib": round(max(0, m.required - m.available) / GIB, 3),
           "compile_s": round(result.compile_s, 2), "tokens_per_step": result.tokens_per_step,
           "host_peak_rss_gib": round(result.host_rss_bytes / GIB, 2),
           "model_flops_per_step": result.model_flops_per_step,
           "flops_convention": ("fmjax: 6N + 12LdT per token (fmjax/models/flops.py), as "
                                 "training logs"),
           "peak_flops": result.target.peak_flops, "ideal_step_s": result.ideal_step_s,
           "knobs": [] if result.fits else knobs(result)}
    if step_s:
        out["step_s"], out["mfu"] = step_s, result.mfu(step_s)
    return out


def report_lines(result: Result, step_s: float | None = None) -> list[str]:
    """The human-readable report (the CLI prints it, then summary() as JSON)."""
    c, m, t = result.config, result.memory, result.target
    g = lambda v: "-" if v is None else f"{v / GIB:.2f} GiB"  # noqa: E731
    lines = [
        f"target    {t.description}",
        f"model     {c.model.family}: {result.num_params:,} params, {c.model.n_layers} layers, "
        f"d_model {c.model.d_model}, seq {c.model.seq_len}, {c.model.dtype} compute, remat "
        f"{c.model.remat_policy}, attention {c.model.attention_impl}",
        f"mesh      {result.mesh}; global batch {c.train.global_batch_size} x "
        f"{result.tokens_per_step // c.train.global_batch_size} tokens, microbatches "
        f"{c.train.microbatches}",
        f"compile   {result.compile_s:.1f} s (train step: forward, backward, "
        f"{c.optim.name} update); this process peaked at {result.host_rss_bytes / GIB:.1f} GiB "
        "of host RAM",
        "memory per device:",
        f"  arguments     {g(m.arguments)}  (params + optimizer state {g(result.state_bytes)},"
        " batch)" if result.compiled else
        f"  arguments     -  (libtpu stopped at the overflow; params + optimizer state are "
        f"{g(result.state_bytes)})",
        f"  outputs       {g(m.outputs)}  (of which donated, reusing arguments: {g(m.aliased)})"
        if result.compiled else "  outputs       -",
        f"  temporaries   {g(m.temporaries)}" + (
            "  (XLA's scratch allocations; not all live at once)"
            if m.temporaries and m.temporaries > m.required else ""),
        f"  peak          {g(m.required)}  of {g(m.available)} ({t.memory_source})",
    ]
    flops_line = (f"model     {result.model_flops_per_step / 1e12:,.1f} TFLOPs per step "
                  f"({result.tokens_per_step:,} tokens; 6N + 12LdT per token, as training logs)")
    lines.append(flops_line)
    ideal = result.ideal_step_s
    if ideal:
        lines.append(f"MFU       {t.peak_source}: 100% MFU = {_seconds(ideal)} per step; "
                     f"40% = {_seconds(ideal / 0.4)}; 60% = {_seconds(ideal / 0.6)}")
        if step_s:
            lines.append(f"          a step of {_seconds(step_s)} would be "
                         f"{100 * result.mfu(step_s):.1f}% MFU")
    else:
        lines.append(f"MFU       peak unknown ({t.peak_source})")
    if result.fits:
        spare = m.available - m.required
        tight = ("; tight: the runtime and other programs need some HBM too"
                 if m.required > TIGHT * m.available else "")
        lines.append(f"verdict   FITS: peak {m.required / GIB:.2f} GiB is "
                     f"{100 * m.required / m.available:.0f}% of {m.available / GIB:.2f} GiB; "
                     f"{spare / GIB:.2f} GiB to spare{tight}")
    else:
        over = m.required - m.available
        lines.append(f"verdict   DOES NOT FIT: needs {m.required / GIB:.2f} GiB per device"
                     f"{' (temporaries alone, libtpu)' if result.compiled is None else ''}, "
                     f"{m.available / GIB:.2f} GiB available: {over / GIB:.2f} GiB over "
                     f"({m.required / m.available:.1f}x)")
        lines.append("          knobs that lower it:")
        lines += [f"            {k}" for k in knobs(result)]
    return lines


def to_json(result: Result, step_s: float | None = None) -> str:
    return json.dumps(summary(result, step_s))


def _seconds(s: float) -> str:
    return f"{s:.3f} s" if s >= 1 else f"{1e3 * s:.3g} ms"
