"""Where a train step would run, described without being attached: a TPU slice as libtpu's
compile-only devices (any Linux x86-64 host with libtpu installed), or this machine's own
devices (`local`, `cpu:N`), each with the memory one device may use and the peak FLOP/s.
Used by fmjax/aot/compile.py; slice names are translated by fmjax/aot/tpu_slices.py.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import re
import sys

import jax
import jax.numpy as jnp

from fmjax.training import peak_flops
from fmjax.aot import tpu_slices

GIB = 2.0 ** 30
# Per-device HBM as libtpu 0.0.42 reports it when a compile overflows ("exceeds available HBM
# (95.74G)"); used when the probe below cannot read the number from libtpu itself.
HBM_GIB = {"TPU v4": 30.75, "TPU v5 lite": 15.75, "TPU v5": 95.74, "TPU v6 lite": 31.25,
           "TPU7x": 94.75}
_HBM_MESSAGE = re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT]?)\) exceeds available "
                          r"HBM \(([\d.]+)([KMGT]?)\)")
_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


class PreflightError(RuntimeError):
    """Cannot pre-flight (missing or mismatched libtpu, a refused topology, a config that does
    not map onto the target); the message names the value and the fix."""


@dataclasses.dataclass
class Target:
    """Where the step would run."""
    description: str  # e.g. "v5p-128 = v5p:4x4x4: 64 chips, 64 JAX devices, 16 hosts"
    platform: str  # tpu | gpu | cpu
    devices: list
    chips: int  # physical chips (TPU7x: 2 JAX devices per chip)
    processes: int  # host processes the devices belong to
    num_slices: int
    memory_bytes: int  # memory budget of one device
    memory_source: str
    peak_flops: float | None  # dense bf16 FLOP/s of all chips; None where fmjax measures it (CPU)
    peak_source: str
    tpu_slice: tpu_slices.TpuSlice | None = None  # the slice (one of num_slices), for TPU


def check_libtpu() -> str:
    """The installed libtpu's version; PreflightError when it is missing or is not the release
    the installed jax was built against (jax's own `jax[tpu]` requirement)."""
    fix = f"pip install 'jax[tpu]=={jax.__version__}'  (or: pip install -e '.[tpu]')"
    try:
        installed = importlib.metadata.version("libtpu")
    except importlib.metadata.PackageNotFoundError:
        if os.environ.get("TPU_LIBRARY_PATH"):
            return "TPU_LIBRARY_PATH=" + os.environ["TPU_LIBRARY_PATH"]
        where = ("" if sys.platform == "linux" and platform.machine() == "x86_64" else
                 f" libtpu is published for Linux x86-64 only (this is {sys.platform} "
                 f"{platform.machine()}): run it in a Linux x86-64 container or VM.")
        raise PreflightError("compiling for a TPU topology needs libtpu, which is not installed; "
                             f"fix: {fix}.{where}") from None
    wanted = _jax_libtpu_requirement()
    if wanted and not _version_matches(installed, wanted):
        raise PreflightError(f"libtpu {installed} is installed but jax {jax.__version__} needs "
                             f"libtpu{wanted}; fix: {fix}")
    return installed


def _jax_libtpu_requirement() -> str | None:
    """'==0.0.42.*' from jax's metadata line 'libtpu==0.0.42.*; extra == "tpu"'."""
    for req in importlib.metadata.requires("jax") or []:
        spec, _, marker = req.partition(";")
        match = re.match(r"^libtpu\s*(\S.*)$", spec.strip())
        if match and '"tpu"' in marker:
            return match.group(1).replace(" ", "")
    return None


def _version_matches(version: str, spec: str) -> bool:
    try:
        from packaging.specifiers import SpecifierSet
        return version in SpecifierSet(spec)
    except ImportError:  # packaging absent: the '==X.*' / '==X' forms jax uses
        want = spec.lstrip("=")
        return version.startswith(want[:-1]) if want.endswith(".*") else version == want


def resolve_target(topology: str, num_slices: int = 1) -> Target:
    """'local' (this process's devices), 'cpu:N', a slice name ('v5p-128') or a topology
    ('v5p:4x4x4') -> Target. Raises PreflightError or tpu_slices.SliceError."""
    if num_slices < 1:
        raise PreflightError(f"--num_slices={num_slices}: must be at least 1")
    if topology == "local" or topology.startswith("cpu:"):
        if num_slices != 1:
            raise PreflightError(f"--num_slices={num_slices} applies to TPU slices, not "
                                 f"--topology={topology}")
        return _local_target(topology)
    tpu = tpu_slices.parse(topology)
    check_libtpu()
    # libtpu locks /tmp/libtpu_lockfile so that two processes never drive the same chips;
    # compile-only devices drive none, and a second pre-flight (or a training run beside it)
    # would otherwise stop with "Internal error when accessing libtpu multi-process lockfile"
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies
    kwargs = dict(tpu.topology_kwargs)
    if num_slices > 1:
        kwargs["num_slices"] = num_slices
    try:
        devices = topologies.get_topology_desc(topology_name=tpu.topology_name, platform="tpu",
                                               **kwargs).devices
    except jax.errors.JaxRuntimeError as e:  # libtpu's text (e.g. its name regex) names no fix
        if "INVALID_ARGUMENT" not in str(e):
            raise
        raise PreflightError(f"libtpu refused --topology={topology} (as "
                             f"{tpu.topology_name!r}): {e}. Accepted: slice names such as "
                             f"{tpu_slices.SLICE_EXAMPLES}, or topologies such as "
                             f"{tpu_slices.TOPOLOGY_EXAMPLES}") from e
    memory, source = tpu_hbm_bytes(devices[0])
    per_chip = peak_flops.chip_peak(devices[0])
    chips = tpu.chips * num_slices
    slices = f" x {num_slices} slices" if num_slices > 1 else ""
    return Target(
        description=tpu.describe() + slices, platform="tpu", devices=list(devices), chips=chips,
        processes=len({d.process_index for d in devices}), num_slices=num_slices,
        memory_bytes=memory, memory_source=source,
        peak_flops=per_chip * chips if per_chip else None,
        peak_source=(f"{chips} x {devices[0].device_kind} chips @ {per_chip / 1e12:.0f} "
                     "TFLOP/s bf16" if per_chip else f"unknown {devices[0].device_kind!r}"),
        tpu_slice=tpu)


def _local_target(topology: str) -> Target:
    if topology == "local":
        devices = jax.devices()
    else:
        try:
            n = int(topology.split(":", 1)[1])
        except ValueError:
            raise PreflightError(f"--topology={topology}: use cpu:N with N a device count, "
                                 "e.g. cpu:8") from None
        devices = jax.devices("cpu")
        if n < 1 or n > len(devices):
            raise PreflightError(
                f"--topology={topology}: {len(devices)} CPU devices exist in this process; "
                f"python -m fmjax.preflight makes N of them (as does XLA_FLAGS="
                f"--xla_force_host_platform_device_count={n} before jax starts)")
        devices = devices[:n]
    device = devices[0]
    stats = _memory_stats(device)
    if stats.get("bytes_limit"):
        memory, source = int(stats["bytes_limit"]), f"{device.device_kind} memory_stats bytes_limit"
    else:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        memory = ram // len(devices)
        source = (f"host RAM {ram / GIB:.1f} GiB shared by {len(devices)} "
                  f"{device.platform} device{'s' if len(devices) > 1 else ''}")
    peak = peak_flops.device_peak(device)
    return Target(
        description=f"{topology}: {len(devices)} x {device.device_kind}",
        platform=device.platform, devices=list(devices), chips=len(devices),
        processes=len({d.process_index for d in devices}), num_slices=1,
        memory_bytes=memory, memory_source=source,
        peak_flops=peak * len(devices) if peak else None,
        peak_source=(f"{len(devices)} x {device.device_kind} @ {peak / 1e12:.0f} TFLOP/s bf16"
                     if peak else "none: fmjax measures the CPU peak (python -m fmjax.bench)"))


def _memory_stats(device) -> dict:
    try:
        return device.memory_stats() or {}
    except Exception:  # CPU devices and compile-only devices have none
        return {}


def tpu_hbm_bytes(device) -> tuple[int, str]:
    """(HBM bytes of one device, where the number comes from). libtpu states it when a compile
    overflows, so a 2^36-byte temporary is compiled (nothing runs) and the message read; the
    table HBM_GIB (measured the same way) is the fallback."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import numpy as np
    sharding = NamedSharding(Mesh(np.asarray([device]), ("x",)), P())

    def overflow(x):  # [2^17, 2^10] @ its transpose: 2^34 floats, sorted so it must exist
        a = jnp.arange(1 << 17, dtype=jnp.float32)[:, None] * x
        return jnp.sort(a @ a.T, axis=0)[:1, :1]

    try:
        jax.jit(overflow, in_shardings=sharding, out_shardings=sharding).lower(
            jax.ShapeDtypeStruct((1 << 10,), jnp.float32, sharding=sharding)).compile()
    except Exception as e:  # noqa: BLE001  (any failure falls back to the table)
        parsed = parse_hbm_overflow(str(e))
        if parsed:
            return parsed[1], "the HBM libtpu allows one program"
    kind = device.device_kind
    if kind in HBM_GIB:
        return int(HBM_GIB[kind] * GIB), "fmjax.aot.targets.HBM_GIB (libtpu 0.0.42's limit)"
    raise PreflightError(f"unknown HBM size of {kind!r}: add it to fmjax.aot.targets.HBM_GIB")


def parse_hbm_overflow(message: str) -> tuple[int, int] | None:
    """(required temporaries, available HBM) in bytes from libtpu's RESOURCE_EXHAUSTED text."""
    match = _HBM_MESSAGE.search(message)
    if not match:
        return None
    need, need_unit, have, have_unit = match.groups()
    return int(float(need) * _UNITS[need_unit]), int(float(have) * _UNITS[have_unit])
