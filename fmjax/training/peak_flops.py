"""Peak FLOP/s of the devices, the denominator of MFU (the numerator, model FLOPs per token,
is fmjax/models/flops.py): MFU = achieved model FLOP/s / peak FLOP/s. Peaks come from the
table below (dense bf16, per chip); on CPU the peak is measured as the best fp32 matmul
throughput of this host (see `CpuMatmulPeak`).
"""
from __future__ import annotations

import time

import jax
import numpy as np

# Dense bf16 peak FLOP/s per chip, from vendor spec sheets.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5": 459e12,  # v5p
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "TPU v6e": 918e12,
    "TPU7x": 2307e12,
    "NVIDIA H100": 989e12,  # SXM; PCIe is 756e12
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA B200": 2250e12,
}


# JAX devices per chip where a chip shows up as several (TPU7x: its two chiplets).
DEVICES_PER_CHIP = {"TPU7x": 2}


def _lookup(table: dict, device):
    kind = getattr(device, "device_kind", "")
    for name, value in sorted(table.items(), key=lambda kv: -len(kv[0])):
        if kind.startswith(name) or name in kind:
            return value
    return None


def chip_peak(device) -> float | None:
    """Dense bf16 FLOP/s of the chip `device` is (part of); None for an unknown kind."""
    return _lookup(PEAK_FLOPS, device)


def device_peak(device) -> float | None:
    """Dense bf16 FLOP/s of one JAX device: its chip's peak over the devices per chip."""
    peak = chip_peak(device)
    return peak / (_lookup(DEVICES_PER_CHIP, device) or 1) if peak else None


class CpuMatmulPeak:
    """Best fp32 matmul FLOP/s seen on this host: n x n x n products on one CPU device (XLA
    uses every core for one product), over several sizes and repeated samples.

    The MAX over sizes and samples is kept, so the peak is a best case: more samples can only
    raise it (lower MFU). `sample()` can be called between timed steps, so that peak and step
    see the same machine load (on a shared machine a peak measured once, at another moment,
    can be off by 2x either way)."""

    def __init__(self, sizes=(1024, 1536, 2048)):
        dev = jax.devices("cpu")[0]
        rng = np.random.default_rng(0)
        mm = jax.jit(lambda x, y: x @ y)
        self._cases = []
        for n in sizes:
            # uniform [0, 1) float32: the product's speed does not depend on the values, and
            # it is much cheaper to draw than normal float64 at every CLI start
            a, b = (jax.device_put(rng.random((n, n), dtype=np.float32), dev) for _ in range(2))
            mm(a, b).block_until_ready()  # compile + warm up
            self._cases.append((n, a, b, mm))
        self.best = 0.0
        self.samples: list[float] = []

    def sample(self) -> float:
        """Times one product of each size; returns the best FLOP/s of this round."""
        round_best = 0.0
        for n, a, b, mm in self._cases:
            t0 = time.perf_counter()
            mm(a, b).block_until_ready()
            round_best = max(round_best, 2.0 * n ** 3 / (time.perf_counter() - t0))
        self.samples.append(round_best)
        self.best = max(self.best, round_best)
        return round_best


_HOST_PROBE: CpuMatmulPeak | None = None


def host_probe(reps: int = 7) -> CpuMatmulPeak:
    """This process's CpuMatmulPeak, sampled `reps` rounds on first use and kept. The train and
    fine-tune CLIs take it before their data pipelines start (fmjax.cli.run_stage): measured
    later, tokenizer threads sharing the cores halved the peak and doubled the logged MFU."""
    global _HOST_PROBE
    if _HOST_PROBE is None:
        probe = CpuMatmulPeak()
        for _ in range(reps):
            probe.sample()
        _HOST_PROBE = probe
    return _HOST_PROBE


def total_peak(devices=None, cpu_probe: CpuMatmulPeak | None = None) -> tuple[float, str]:
    """(peak FLOP/s of the devices this process drives, description of where it came from).
    On CPU the peak is measured (or taken from `cpu_probe`, already sampled by the caller)."""
    devices = devices if devices is not None else jax.local_devices()
    if devices[0].platform == "cpu":
        peak = (cpu_probe if cpu_probe is not None and cpu_probe.best else host_probe()).best
        return peak, (f"measured fp32 matmul {peak / 1e9:.1f} GFLOP/s (host, best n^3 product, "
                      "n in 1024/1536/2048)")
    peak = device_peak(devices[0])
    if peak is None:
        return float("nan"), f"unknown device kind {devices[0].device_kind!r}"
    return peak * len(devices), f"{len(devices)} x {devices[0].device_kind} @ {peak / 1e12:.0f} TFLOP/s"
