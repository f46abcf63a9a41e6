"""Where the wall time of a compiled XLA:CPU step goes: `python -m fmjax.bench --profile_steps=N`.

The step runs under `jax.profiler`; every instant of the trace is split evenly among the ops
running then on XLA:CPU's worker threads, so two ops sharing the cores each get half, and
instants with no op running are reported as `(no op running)` (the executor's gaps between
dependent ops). Ops are grouped by their JAX source name with layer numbers folded together
(`FWD layer_*/mlp/up/dot_general`, `BWD ...` for the backward pass); the shares add up to the
traced wall time. XLA:CPU only: on accelerators use the TensorBoard profile plugin.
"""
from __future__ import annotations

import collections
import glob
import os
import re
import tempfile

IDLE = "(no op running)"
_SKIPPED_EVENTS = ("ThunkExecutor", "end:", "SlinkyThreadPool", "ThreadpoolListener", "while")
# the threads XLA:CPU runs ops on: its intra-op pool, and PjRt's client thread, which runs
# some ops itself (any of them, depending on timing; a profile without it missed them)
_OP_THREADS = ("XLAEigen", "XLAPjRtCpuClient")


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> its grouped JAX source name (the `op_name` metadata)."""
    names = {}
    for line in hlo_text.splitlines():
        m = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = ", line)
        if m:
            src = re.search(r'op_name="([^"]*)"', line)
            names[m.group(1)] = _group(src.group(1)) if src else ""
    return names


def _group(op_name: str) -> str:
    name = re.sub(r"^jit\([^)]*\)/", "", op_name)
    name = re.sub(r"layer_\d+/(layer_\d+\._sublayer/)?", "layer_*/", name)
    direction = "BWD " if name.startswith("transpose(") else "FWD " if "jvp(" in name else ""
    name = re.sub(r"^(transpose\()?jvp\([^)]*\)\)?/?", "", name)
    return direction + (name or "(top level)")


def wall_shares(events, names: dict[str, str]) -> collections.Counter:
    """events: (start_ns, end_ns, hlo_name) of every op on the worker threads -> wall ns per
    group, each instant split among the ops running then; gaps count as IDLE."""
    points = sorted([(s, 1, n) for s, e, n in events] + [(e, -1, n) for s, e, n in events])
    running = collections.Counter()
    shares = collections.Counter()
    last = points[0][0] if points else 0
    for t, kind, name in points:
        if t > last:
            total = sum(running.values())
            if total == 0:
                shares[IDLE] += t - last
            for op, count in running.items():
                shares[names.get(op) or re.sub(r"\.\d+$", "", op)] += (t - last) * count / total
            last = t
        running[name] += kind
        if running[name] == 0:
            del running[name]
    return shares


def profile_step(compiled, state, batch, steps: int):
    """Runs `steps` more steps of `compiled` under the profiler; returns (state, report) with
    report = {"steps", "wall_ms_per_step", "ops": [[group, ms per step, share], ...]}."""
    import jax
    from jax._src.profiler import ProfileData  # the trace reader jax.profiler itself uses
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for _ in range(steps):
            state, metrics = compiled(state, batch)
            jax.block_until_ready((state, metrics))
        jax.profiler.stop_trace()
        path = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[0]
        data = ProfileData.from_file(path)
    events = [(e.start_ns, e.start_ns + e.duration_ns, e.name)
              for plane in data.planes for line in plane.lines
              if any(thread in line.name for thread in _OP_THREADS)
              for e in line.events if not e.name.startswith(_SKIPPED_EVENTS)]
    shares = wall_shares(events, op_names(compiled.as_text()))
    total = sum(shares.values()) or 1
    ops = [[group, ns / steps / 1e6, ns / total] for group, ns in shares.most_common()]
    return state, {"steps": steps, "wall_ms_per_step": total / steps / 1e6, "ops": ops}


def format_report(report: dict, top: int = 20) -> str:
    lines = [f"where the wall time goes ({report['steps']} profiled steps, "
             f"{report['wall_ms_per_step']:.1f} ms each; each instant split among the ops "
             "running then):"]
    for group, ms, share in report["ops"][:top]:
        lines.append(f"  {100 * share:5.1f}%  {ms:7.2f} ms  {group}")
    rest = report["ops"][top:]
    if rest:
        lines.append(f"  {100 * sum(r[2] for r in rest):5.1f}%  {sum(r[1] for r in rest):7.2f}"
                     f" ms  ({len(rest)} smaller groups)")
    return "\n".join(lines)
