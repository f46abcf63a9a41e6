"""Test setup: 8 fake CPU devices, set before jax is imported anywhere."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

assert jax.device_count() == 8, "tests expect 8 fake CPU devices"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One TFDS cache for the whole session (the stdlib corpus is built once)."""
    return str(tmp_path_factory.mktemp("tfds"))
