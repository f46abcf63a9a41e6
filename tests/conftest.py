"""Test setup: 8 fake CPU devices, set before jax is imported anywhere."""
import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# A JAX persistent compilation cache for the CLI subprocesses the tests start (`python -m
# fmjax.train ...`): dozens of them compile the same tiny models, and a hit loads the executable
# a fresh compile would produce (same losses to the bit). One directory per session, made by the
# first pytest process and inherited by xdist workers and their subprocesses; removed at exit.
# The test processes themselves compile as before (jax reads the variable at import, below).
_CACHE = "FMJAX_TEST_COMPILATION_CACHE"
if _CACHE not in os.environ:
    os.environ[_CACHE] = tempfile.mkdtemp(prefix="fmjax-test-jax-cache-")
    atexit.register(shutil.rmtree, os.environ[_CACHE], ignore_errors=True)
if os.environ.get("JAX_COMPILATION_CACHE_DIR") == os.environ[_CACHE]:
    del os.environ["JAX_COMPILATION_CACHE_DIR"]  # an xdist worker: not for this process

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

assert jax.device_count() == 8, "tests expect 8 fake CPU devices"
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[_CACHE]  # for subprocesses only
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One TFDS cache for the whole session (the stdlib corpus is built once)."""
    return str(tmp_path_factory.mktemp("tfds"))
