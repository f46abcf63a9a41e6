"""Test setup: 8 fake CPU devices, set before jax is imported anywhere."""
import atexit
import os
import shutil
import tempfile

from tests.helpers import FAST_COMPILE_XLA_FLAGS  # (imports no jax)

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8 " +
                           FAST_COMPILE_XLA_FLAGS).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# A JAX persistent compilation cache for the test processes and the CLI subprocesses they start
# (`python -m fmjax.train ...`): they compile the same tiny models again and again (every
# engine's parameter init, the same train step in several tests and CLI runs), and a hit loads
# the executable a fresh compile would produce (same losses to the bit). One directory per
# session, made by the first pytest process and inherited by xdist workers and their
# subprocesses; removed at exit. (The pre-flight CLI tests drop the variable: they report what
# a fresh compile measures.)
_CACHE = "FMJAX_TEST_COMPILATION_CACHE"
if _CACHE not in os.environ:
    os.environ[_CACHE] = tempfile.mkdtemp(prefix="fmjax-test-jax-cache-")
    atexit.register(shutil.rmtree, os.environ[_CACHE], ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[_CACHE]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax  # noqa: E402  (after XLA_FLAGS and the cache variables)
import pytest  # noqa: E402

assert jax.device_count() == 8, "tests expect 8 fake CPU devices"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One TFDS cache for the whole session (the stdlib corpus is built once)."""
    return str(tmp_path_factory.mktemp("tfds"))


# ------------------------------------------------- scheduling over the xdist workers (-n 2)

# `--dist loadfile` hands whole files to the workers, and xdist queues the files with the most
# tests first: the slowest files (a few long CLI tests each) came last and ran on one worker
# while the other idled. These go first, slowest first (measured on a 2-core machine); the rest
# follow in xdist's order. Paths are relative to tests/. A stale list costs balance, not results.
SLOWEST_FIRST = (
    "e2e/test_train_cli.py",  # with test_finetune_cli.py and test_notebooks.py, see below
    "e2e/test_families_cli.py",
    "aot/test_preflight.py",
    "e2e/test_preemption.py",
    "hf/test_convert_decoders.py",
    "e2e/test_multiprocess.py",
    "models/test_encoder_models.py",
    "test_sharding.py",
    "kernels/test_cpu_attention.py",
    "models/test_models.py",
    "training/test_step.py",
    "training/test_checkpoint.py",
)
# Files that use the session's trained workdirs (`full_run`, `finetune_run` in
# tests/e2e/conftest.py) run on one worker, so that those CLI runs happen once, not per worker.
SAME_WORKER_AS = {"e2e/test_finetune_cli.py": "e2e/test_train_cli.py",
                  "e2e/test_notebooks.py": "e2e/test_train_cli.py",
                  "e2e/test_evaluate_cli.py": "e2e/test_train_cli.py"}


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling
    if not all(hasattr(LoadFileScheduling, name) for name in ("_split_scope",
                                                               "_assign_work_unit")):
        return None  # an xdist without these internals: its own order (slower, same results)
    tests_dir = os.path.dirname(os.path.abspath(__file__))

    def relative(scope):  # a node id's file, relative to tests/
        return os.path.relpath(os.path.join(str(config.rootpath), scope), tests_dir)

    class Scheduling(LoadFileScheduling):
        ordered = False

        def _split_scope(self, nodeid):
            path = super()._split_scope(nodeid)
            owner = SAME_WORKER_AS.get(relative(path))
            return path if owner is None else os.path.relpath(
                os.path.join(tests_dir, owner), str(config.rootpath))

        def _assign_work_unit(self, node):
            if not self.ordered:  # the first assignment: the whole queue is known
                rank = {path: i for i, path in enumerate(SLOWEST_FIRST)}
                for scope in sorted(self.workqueue,
                                    key=lambda s: rank.get(relative(s), len(rank))):
                    self.workqueue.move_to_end(scope)
                self.ordered = True
            super()._assign_work_unit(node)

    return Scheduling(config, log)


# ------------------------------------------------------------------------------- markers

def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: runs a CLI end to end in a subprocess (tests/e2e/)")
    config.addinivalue_line("markers", "slow: takes tens of seconds or more; left out of the "
                            "developers' fast loop (-m 'not e2e and not slow')")


def pytest_collection_modifyitems(config, items):
    e2e_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e") + os.sep
    for item in items:
        if str(item.path).startswith(e2e_dir):
            item.add_marker(pytest.mark.e2e)
