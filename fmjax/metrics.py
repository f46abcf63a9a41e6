"""Where metrics go: metrics.jsonl, TensorBoard event files (no TensorFlow), a progress line."""
from __future__ import annotations

import json
import math
import os
import sys
import time


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
        from tensorboardX import SummaryWriter
        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=10)
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
                f"gnorm {m['grad_norm']:.3f} tok/s {m['tokens_per_sec']:,.0f} "
                f"mfu {100 * m['mfu']:.1f}% eta {_fmt_time(eta)}")
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
