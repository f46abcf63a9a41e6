"""Builds fmjax's C++ kernels for XLA:CPU and registers them through the XLA FFI.

A kernel is one C++ source next to this file (attention.cc, dense.cc) that includes
kernels.h. It is compiled on first use with the host's C++ compiler (`$CXX`, else c++,
g++ or clang++; -O3 -march=native, or -march=$FMJAX_CPU_ARCH) against the XLA FFI headers
that jaxlib ships, into `$FMJAX_CACHE_DIR` (default ~/.cache/fmjax), named by a hash of
everything that affects the binary (sources, compiler, flags, jax, the CPU's features), so a
build runs once per host and version and concurrent processes do not clash.

`FMJAX_CPU_KERNELS=0` in the environment turns every kernel off (XLA's paths everywhere, e.g.
to compare numerics); it is read when a kernel is first used.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp

HEADER = pathlib.Path(__file__).with_name("kernels.h")
FLAGS = ("-O3", "-std=c++17", "-fno-math-errno", "-shared", "-fPIC", "-w")
MULTIPLE = 16  # floats in the widest vector a build uses (AVX-512): rows the panels load whole


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("FMJAX_CACHE_DIR") or "~/.cache/fmjax").expanduser()


def compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_features() -> str:
    """What -march=native depends on: the CPU's flags (Linux), else its name."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _flags() -> tuple[str, ...]:
    """FLAGS and the target: the host's own CPU, or $FMJAX_CPU_ARCH (e.g. x86-64-v3 for AVX2
    only; the tests build the narrower vector paths that way)."""
    return (*FLAGS, f"-march={os.environ.get('FMJAX_CPU_ARCH') or 'native'}")


def build(source: pathlib.Path, cxx: str) -> pathlib.Path:
    """The shared library of `source`, compiled once into cache_dir()."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    flags = _flags()
    key = hashlib.sha256("\0".join([source.read_text(), HEADER.read_text(), cxx, version,
                                    " ".join(flags), jax.__version__, jax.ffi.include_dir(),
                                    _cpu_features()]).encode()).hexdigest()[:16]
    library = cache_dir() / f"{source.stem}-{key}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        built = pathlib.Path(tmp) / library.name
        result = subprocess.run([cxx, *flags, "-I", jax.ffi.include_dir(), str(source),
                                 "-o", str(built)], capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"{cxx} failed: {result.stderr.strip()[-2000:]}")
        os.replace(built, library)  # atomic: a concurrent build of the same key is identical
    return library


def load(source: pathlib.Path, targets: dict[str, str]) -> str | None:
    """Builds `source` and registers its handler symbols with XLA:CPU under the target names
    ({target: symbol}); None when done, else why it cannot be (callers cache the answer)."""
    cxx = compiler()
    if cxx is None:
        return "no C++ compiler found (set $CXX, or install g++ or clang++)"
    try:
        library = ctypes.cdll.LoadLibrary(str(build(source, cxx)))
        for target, symbol in targets.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                        platform="cpu")
    except (OSError, RuntimeError, AttributeError) as e:
        return f"building {source.name} failed: {e}"
    return None


def loader(source: pathlib.Path, targets: dict[str, str]):
    """The `unavailable()` of one kernel source: None once it is built and registered (on the
    first call; the answer is cached), else why it cannot be."""
    @functools.cache
    def unavailable() -> str | None:
        if os.environ.get("FMJAX_CPU_KERNELS", "1") == "0":
            return "turned off by FMJAX_CPU_KERNELS=0"
        return load(source, targets)
    return unavailable


def f32(*shapes) -> tuple:
    """float32 result shapes of an FFI call, one per shape."""
    return tuple(jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes)


def single_cpu_device() -> bool:
    """Whether the program runs on the CPU backend with no mesh of more than one device: where
    fmjax's kernels apply (they are not partitioned)."""
    mesh = jax.sharding.get_abstract_mesh()
    return jax.default_backend() == "cpu" and (mesh.empty or mesh.size == 1)
