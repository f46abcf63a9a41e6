"""Multi-process runs on JAX's own multi-controller runtime (`jax.distributed`).

`initialize()` runs once per CLI process before anything touches devices (fmjax.cli.run_stage):
  * explicitly, from flags or environment (flags win):
      --coordinator_address=HOST:PORT  FMJAX_COORDINATOR_ADDRESS
      --num_processes=N                FMJAX_NUM_PROCESSES
      --process_id=I                   FMJAX_PROCESS_ID
    (launch/local.sh sets the environment for N processes on one machine);
  * automatically where the environment says this is one process of a cluster job that JAX
    detects by itself: SLURM with more than one task (SLURM_JOB_ID and SLURM_NTASKS > 1),
    Open MPI (OMPI_COMM_WORLD_SIZE > 1), multi-host TPU (TPU_WORKER_HOSTNAMES with several
    hosts, or MEGASCALE_COORDINATOR_ADDRESS). `--distributed=on` asks JAX to detect the
    cluster anyway (e.g. a TPU VM slice, which JAX finds through the metadata server);
    `--distributed=off` never initialises. A plain laptop run initialises nothing.
Startup waits at most `--distributed_timeout` seconds for every process to join; the error
names the coordinator and the processes that did not join (or how many were expected).

On CPU, cross-process collectives use gloo. `--expect_accelerator=gpu|tpu|any` (or
FMJAX_EXPECT) stops with an error when only CPU devices are found, instead of training on CPU.

`check_agreement(items)` compares digests of the resolved config, tokenizer and data split
across processes at startup, so a host with a stale file fails fast and names what differs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
import threading
from typing import Mapping

ENV_COORDINATOR = "FMJAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "FMJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "FMJAX_PROCESS_ID"
ENV_EXPECT = "FMJAX_EXPECT"
ACCELERATORS = ("gpu", "tpu", "any")


class DistributedError(RuntimeError):
    """A multi-process run could not start (bad settings, a process missing, wrong devices)."""


@dataclasses.dataclass(frozen=True)
class Spec:
    """How to call jax.distributed.initialize: explicit (all three set) or auto (none set)."""
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    reason: str = ""

    @property
    def explicit(self) -> bool:
        return self.coordinator_address is not None


def _int(name: str, value) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{name} = {value!r}: not an integer") from None


def detected_cluster(environ: Mapping[str, str]) -> str | None:
    """Which multi-process cluster job the environment describes, or None (a single process)."""
    if environ.get("SLURM_JOB_ID") and (_int("SLURM_NTASKS", environ.get("SLURM_NTASKS")) or 1) > 1:
        return f"SLURM job {environ['SLURM_JOB_ID']} with {environ['SLURM_NTASKS']} tasks"
    if (_int("OMPI_COMM_WORLD_SIZE", environ.get("OMPI_COMM_WORLD_SIZE")) or 1) > 1:
        return f"Open MPI job of {environ['OMPI_COMM_WORLD_SIZE']} processes"
    hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1:
        return f"multi-host TPU slice ({len(hosts)} workers)"
    if environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "multi-slice TPU (MEGASCALE_COORDINATOR_ADDRESS)"
    return None


def resolve(*, coordinator_address=None, num_processes=None, process_id=None, mode="auto",
            environ: Mapping[str, str] | None = None) -> Spec | None:
    """The initialisation to do, from flag values (None = not given) and the environment;
    None when this is a single-process run. Pure: no JAX calls."""
    environ = os.environ if environ is None else environ
    if mode == "off":
        return None
    address = coordinator_address or environ.get(ENV_COORDINATOR) or None
    count = num_processes if num_processes is not None else _int(
        ENV_NUM_PROCESSES, environ.get(ENV_NUM_PROCESSES))
    index = process_id if process_id is not None else _int(
        ENV_PROCESS_ID, environ.get(ENV_PROCESS_ID))
    if address is not None:
        missing = [name for name, v in (("--num_processes", count), ("--process_id", index))
                   if v is None]
        if missing:
            raise DistributedError(
                f"--coordinator_address={address} needs {' and '.join(missing)} too (or "
                f"{ENV_NUM_PROCESSES} / {ENV_PROCESS_ID}); launch/local.sh sets all three")
        if count < 1 or not 0 <= index < count:
            raise DistributedError(f"--process_id={index} must be in 0..{count - 1} "
                                   f"(--num_processes={count})")
        if count == 1 and mode != "on":
            return None
        return Spec(address, count, index, reason=f"explicit coordinator {address}")
    if count is not None or index is not None:
        raise DistributedError(
            "--num_processes / --process_id given without --coordinator_address (or "
            f"{ENV_COORDINATOR}); set HOST:PORT of process 0, or drop them to auto-detect")
    if mode == "on":
        return Spec(reason="--distributed=on (JAX detects the cluster)")
    cluster = detected_cluster(environ)
    return Spec(reason=cluster) if cluster else None


def _missing_processes(message: str) -> list[int]:
    """Task ids named in a JAX/XLA coordination-service error (e.g. '/job:jax_worker/task:1')."""
    return sorted({int(t) for t in re.findall(r"task:(\d+)", message)})


def failure_message(spec: Spec, timeout: int, error: Exception | None = None) -> str:
    """Names the coordinator and who did not join (as far as JAX tells); error=None: the
    startup watchdog fired."""
    missing = _missing_processes(str(error or ""))
    where = spec.coordinator_address or "the coordinator JAX detected"
    if missing:
        who = f"process(es) {', '.join(map(str, missing))} did not join"
    elif spec.num_processes and spec.process_id == 0:
        who = (f"not all of the {spec.num_processes} expected processes joined this "
               "coordinator (JAX does not say which); check that every process was started "
               f"with --num_processes={spec.num_processes} and this address")
    elif spec.num_processes:
        who = (f"process {spec.process_id} of {spec.num_processes} could not complete startup "
               "with the coordinator (is process 0 running and reachable at that address, "
               "and did all the others start?)")
    else:
        who = "not every process joined"
    said = "" if error is None else f" JAX said: {type(error).__name__}: {str(error)[:800]}"
    return (f"jax.distributed startup failed ({spec.reason}): coordinator {where}, timeout "
            f"{timeout} s (--distributed_timeout): {who}.{said}")


def _expected(expect_flag) -> str | None:
    value = (expect_flag or os.environ.get(ENV_EXPECT) or "").strip().lower() or None
    if value is not None and value not in ACCELERATORS:
        raise DistributedError(f"--expect_accelerator / {ENV_EXPECT} = {value!r}: use one of "
                               f"{', '.join(ACCELERATORS)}")
    return value


def check_devices(expected: str | None, devices) -> None:
    """Stops when `expected` (gpu, tpu, any) accelerators are not what JAX found."""
    if expected is None:
        return
    platforms = sorted({d.platform for d in devices})
    ok = (any(p != "cpu" for p in platforms) if expected == "any"
          else expected in platforms or (expected == "gpu" and "cuda" in platforms))
    if not ok:
        raise DistributedError(
            f"expected {expected} devices (--expect_accelerator / {ENV_EXPECT}) but JAX found "
            f"only {', '.join(platforms)} ({len(devices)} devices): the accelerator runtime is "
            "missing or failed to load (install jax[cuda12] / jax[tpu], check "
            "nvidia-smi / the TPU runtime, and JAX_PLATFORMS); not training on CPU")


def _startup_timed_out(spec: Spec, timeout: int) -> None:
    sys.stderr.write("error: " + failure_message(spec, timeout) + "\n")
    sys.stderr.flush()
    os._exit(1)


_initialized = False


@dataclasses.dataclass(frozen=True)
class Options:
    """What the command line says about joining a multi-process run (fmjax/cli.py defines the
    flags); None = from the environment, or not set."""
    coordinator_address: str | None = None  # --coordinator_address
    num_processes: int | None = None  # --num_processes
    process_id: int | None = None  # --process_id
    mode: str = "auto"  # --distributed: auto | on | off
    timeout: int = 300  # --distributed_timeout, seconds
    expect_accelerator: str | None = None  # --expect_accelerator: gpu | tpu | any


def initialize(options: Options = Options()) -> Spec | None:
    """Initialises jax.distributed once (see the module doc) and checks the devices."""
    global _initialized
    import jax
    expected = _expected(options.expect_accelerator)
    spec = None
    if not _initialized:
        spec = resolve(coordinator_address=options.coordinator_address,
                       num_processes=options.num_processes, process_id=options.process_id,
                       mode=options.mode)
        if spec is not None:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            timeout = options.timeout
            # XLA aborts the process (a C++ fatal log, no Python exception) when startup times
            # out, so a watchdog a little earlier says what happened first.
            watchdog = threading.Timer(timeout, _startup_timed_out, (spec, timeout))
            watchdog.daemon = True
            watchdog.start()
            try:
                jax.distributed.initialize(
                    coordinator_address=spec.coordinator_address,
                    num_processes=spec.num_processes, process_id=spec.process_id,
                    initialization_timeout=timeout + 10)
            except Exception as e:  # noqa: BLE001  (XLA raises several types)
                raise DistributedError(failure_message(spec, timeout, e)) from e
            finally:
                watchdog.cancel()
        _initialized = True
    check_devices(expected, jax.devices())
    return spec


# ---- startup agreement ---------------------------------------------------------------------

def digest(data: bytes | str) -> bytes:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).digest()


def disagreements(digests_PK, names) -> list[str]:
    """For gathered digests [processes, items, 32]: 'NAME (processes i, j)' for each item
    where some process differs from process 0."""
    import numpy as np
    digests_PK = np.asarray(digests_PK)
    out = []
    for k, name in enumerate(names):
        bad = [p for p in range(digests_PK.shape[0])
               if not np.array_equal(digests_PK[p, k], digests_PK[0, k])]
        if bad:
            out.append(f"{name} (process{'es' if len(bad) > 1 else ''} "
                       f"{', '.join(map(str, bad))})")
    return out


def check_agreement(items: Mapping[str, bytes | str]) -> None:
    """Every process compares sha256 digests of `items` (name -> content) with process 0's
    (one all-gather, so every process sees a difference and all stop together)."""
    import jax
    if jax.process_count() == 1:
        return
    import numpy as np
    from jax.experimental import multihost_utils
    names = list(items)
    mine = np.stack([np.frombuffer(digest(items[n]), np.uint8) for n in names])
    gathered = np.asarray(multihost_utils.process_allgather(mine))  # [P, K, 32]
    bad = disagreements(gathered, names)
    if bad:
        raise DistributedError(
            "processes disagree with process 0 at startup on: " + "; ".join(bad)
            + ". Every host must run the same code, config file and overrides, tokenizer file "
            "and dataset version (a stale copy on one host?)")


def process_zero_first(fn):
    """`fn()` on process 0, then (after a barrier) on the others: for steps that build shared
    files (the tokenizer, a TFDS cache) that the other processes then only read."""
    import jax
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils
    if jax.process_index() == 0:
        result = fn()
        multihost_utils.sync_global_devices("fmjax: process 0 prepared shared files")
        return result
    multihost_utils.sync_global_devices("fmjax: process 0 prepared shared files")
    return fn()
