"""Where metrics go: metrics.jsonl, TensorBoard event files (no TensorFlow), a progress line."""
from __future__ import annotations

import json
import math
import statistics
import os
import sys
import time


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported with torch hidden unless torch is already loaded:
    tensorboardX imports torch whenever it is installed (1.7 s and ~300 MB at every start) only
    to accept torch tensors, and fmjax logs Python floats. `import torch` works again after."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """Writes only on the main process; others get a writer that does nothing."""

    def __init__(self, workdir: str, total_steps: int, enabled: bool = True):
        self.enabled = enabled
        self.total_steps = total_steps
        self.start_time = time.time()
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        self.tb = _summary_writer_class()(os.path.join(workdir, "tensorboard"), flush_secs=10)
        self.tty = sys.stdout.isatty()

    def write(self, step: int, metrics: dict):
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _py(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(k, v, int(step))

    def progress(self, step: int, m: dict, steps_done_here: int):
        if not self.enabled:
            return
        elapsed = time.time() - self.start_time
        rate = steps_done_here / elapsed if elapsed > 0 else 0.0
        eta = (self.total_steps - step) / rate if rate > 0 else float("nan")
        line = (f"step {step}/{self.total_steps} loss {m['loss']:.4f} lr {m['learning_rate']:.2e} "
                f"gnorm {m['grad_norm']:.3f}")
        if "tokens_per_sec" in m:
            line += (f" tok/s {m['tokens_per_sec']:,.0f} mfu {100 * m['mfu']:.1f}% "
                     f"eta {_fmt_time(eta)}")
        if m.get("skipped"):
            line += " (non-finite: update skipped)"
        if self.tty:
            width = 20
            filled = int(width * step / max(self.total_steps, 1))
            line = f"[{'#' * filled}{'.' * (width - filled)}] " + line
        print(line, flush=True)

    def close(self):
        if self.enabled:
            self.jsonl.close()
            self.tb.close()


def _py(v):
    try:
        return v.item()
    except AttributeError:
        return v


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class StepLogger:
    """Pulls each step's metrics to the host one step late (so dispatch stays asynchronous),
    times the steps between pulls, and every `log_every` steps writes a row and a progress line.

    Every logged row holds that one step's own loss, grad_norm and learning_rate (no averaging),
    so a resumed run's rows equal an uninterrupted run's. The first pulled step includes
    compilation: it is logged but only starts the throughput clock; `restart_clock()` after an
    evaluation or other pause keeps that pause out of the throughput. `nonfinite_step` is the
    first step whose loss was NaN or inf."""

    def __init__(self, writer: MetricsWriter, *, log_every: int, total_steps: int, start_step: int,
                 tokens_per_step: int, flops_per_token: float, peak_flops: float):
        self.writer, self.log_every, self.total_steps = writer, log_every, total_steps
        self.start_step, self.tokens_per_step = start_step, tokens_per_step
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.pending = None  # (step, metrics still on device)
        self.clock, self.timed_steps = None, 0
        self.last_loss = float("nan")
        self.nonfinite_step: int | None = None
        self.throughputs: list[float] = []

    def push(self, step: int, device_metrics: dict):
        self.flush()
        self.pending = (step, device_metrics)

    def flush(self):
        if self.pending is None:
            return
        step, device_metrics = self.pending
        self.pending = None
        m = {k: float(v) for k, v in device_metrics.items()}  # blocks until the step is done
        now = time.perf_counter()
        self.last_loss = m["loss"]
        if not math.isfinite(m["loss"]) and self.nonfinite_step is None:
            self.nonfinite_step = step
        m.pop("target_tokens", None)
        first = self.clock is None
        if not first:
            self.timed_steps += 1
        if step % self.log_every == 0 or step == self.total_steps or not math.isfinite(m["loss"]):
            if not first:
                tokens_per_sec = self.timed_steps * self.tokens_per_step / (now - self.clock)
                m.update(tokens_per_sec=tokens_per_sec, mfu=self.mfu(tokens_per_sec))
                self.throughputs.append(tokens_per_sec)
            self.writer.write(step, m)
            self.writer.progress(step, m, step - self.start_step)
            self.clock, self.timed_steps = now, 0
        elif first:
            self.clock, self.timed_steps = now, 0

    def restart_clock(self):
        self.flush()
        self.clock, self.timed_steps = time.perf_counter(), 0

    def mfu(self, tokens_per_sec: float) -> float:
        return tokens_per_sec * self.flops_per_token / self.peak_flops

    def median_tokens_per_sec(self) -> float:
        return statistics.median(self.throughputs) if self.throughputs else float("nan")
