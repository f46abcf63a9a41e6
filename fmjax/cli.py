"""Shared flag handling for the thin CLIs: the ml_collections `--config` file flag with
`--config.a.b=value` overrides, checked against the schema with a did-you-mean, and one rule
for user errors: a mistake in what was asked (a flag, a config value, a path) is one line,
`error: ...` naming the flag and the fix, on stderr, and exit status 2 (`fail`, `UsageError`,
config.ConfigError). Tracebacks are for bugs."""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import NoReturn

from absl import flags
from ml_collections import config_flags

from fmjax import config as config_lib
from fmjax import distributed

FLAGS = flags.FLAGS
USAGE_EXIT = 2  # exit status of a user's mistake


class UsageError(Exception):
    """A mistake in what the user asked for; the message names the flag and the fix."""


def fail(message: str) -> NoReturn:
    """Ends the CLI with `error: message` on stderr and exit status 2."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(USAGE_EXIT)


# joining a multi-process run (fmjax/distributed.py); every CLI that runs steps takes them
flags.DEFINE_string("coordinator_address", None,
                    "HOST:PORT of process 0 for a multi-process run (env "
                    "FMJAX_COORDINATOR_ADDRESS); with --num_processes and --process_id.")
flags.DEFINE_integer("num_processes", None, "Processes in the run (env FMJAX_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "This process's id, 0..N-1 (env FMJAX_PROCESS_ID).")
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "auto: initialise jax.distributed from flags/env or a detected cluster "
                  "(SLURM, MPI, multi-host TPU); on: always (JAX detects the cluster); off: never.")
flags.DEFINE_integer("distributed_timeout", 300,
                     "Seconds to wait for every process to join at startup.")
flags.DEFINE_string("expect_accelerator", None,
                    "gpu, tpu or any: stop with an error if only CPU devices are found "
                    "(env FMJAX_EXPECT).")


def distributed_options() -> distributed.Options:
    """The multi-process flags above, as fmjax.distributed.initialize takes them."""
    return distributed.Options(
        coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
        process_id=FLAGS.process_id, mode=FLAGS.distributed, timeout=FLAGS.distributed_timeout,
        expect_accelerator=FLAGS.expect_accelerator)


def define_config_flag(default: str | None = None):
    """The `--config` file flag; defined once per process, so that importing several CLI
    modules (a test session does) is not an absl DuplicateFlagError."""
    if "config" in FLAGS:
        return
    config_flags.DEFINE_config_file("config", default, "Config file (configs/NAME.py).",
                                    lock_config=True)


def _config_path(argv) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return FLAGS["config"].default if "config" in FLAGS else None


def check_override_keys(argv) -> None:
    """Fails with a did-you-mean before absl parses an override of a key that does not exist."""
    path = _config_path(argv)
    if not path:
        return
    file = path.split(":")[0]
    spec = importlib.util.spec_from_file_location("fmjax_user_config", file)
    if spec is None or spec.loader is None or not os.path.isfile(file):
        fail(f"--config={path}: no such config file; see configs/")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    known = config_lib.flat_keys(module.get_config())
    for arg in argv:
        if arg.startswith("--config.") or arg.startswith("--noconfig."):
            key = arg.split("=", 1)[0].split("config.", 1)[1]
            if key not in known:
                fail(f"unknown config key '{key}' in {arg!r}."
                     f"{config_lib.did_you_mean(key, known)} All keys: fmjax/config.py")


def parse_flags(argv):
    """absl `flags_parser` for app.run: override keys checked first, then absl parsing."""
    check_override_keys(argv)
    try:
        return FLAGS(argv)
    except flags.Error as e:
        fail(str(e))


def load_config():
    if FLAGS.config is None:
        fail("--config is required, e.g. --config=configs/default.py")
    return FLAGS.config


def checkpoint_source(workdir: str | None, checkpoint: str | None,
                      step: int | None) -> tuple[str, str]:
    """(path, its flag) of a CLI's --workdir=DIR [--step=N] | --checkpoint=PATH flags: exactly
    one of the two, and --step only with --workdir; else a UsageError saying which."""
    if (workdir is None) == (checkpoint is None):
        raise UsageError("pass one of --workdir=DIR (a run) or --checkpoint=PATH (a checkpoint "
                         "step directory or an export)")
    if step is not None and checkpoint is not None:
        raise UsageError(f"--step={step} picks a step of --workdir; with "
                         f"--checkpoint={checkpoint} leave it out")
    return (checkpoint, "--checkpoint") if checkpoint is not None else (workdir, "--workdir")


def load_checkpoint(workdir: str, step: int | None = None, tokenizer: str | None = None,
                    flag: str = "--workdir"):
    """fmjax.generation.loading.load_run for the `flag` (--workdir), --step and --tokenizer
    flags: a path that holds no checkpoint, or a checkpoint without a tokenizer, is a
    UsageError naming the flag that fixes it."""
    from fmjax.generation import loading
    from fmjax.training.checkpoint import NotACheckpoint
    try:
        return loading.load_run(workdir, step, tokenizer)
    except NotACheckpoint as e:
        raise UsageError(f"{flag}={workdir}: {e}; pass a directory written by fmjax.train or "
                         "fmjax.finetune, one of its checkpoints/STEP directories, or an "
                         "export") from None
    except loading.NoTokenizer as e:
        raise UsageError(str(e)) from None


def no_extra_args(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}")


def skip_absent_tpu() -> bool:
    """Keeps JAX off the TPU backend when libtpu is installed but this host has no TPU chip
    and no GPU plugin: the test extra installs libtpu (for pre-flight's compile-only TPU
    targets, which do not need the backend), and libtpu's probe for a chip prints several
    lines of errors at every start otherwise. True if it set jax_platforms to cpu. A TPU VM,
    a GPU plugin or the user's JAX_PLATFORMS are left alone."""
    import pkgutil
    if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
        return False
    if importlib.util.find_spec("jax_plugins") is not None:  # jax[cuda] / jax[rocm] plugins
        import jax_plugins
        if any(True for _ in pkgutil.iter_modules(jax_plugins.__path__)):
            return False
    import jax
    try:
        from jax._src import hardware_utils
        chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
    except Exception:  # noqa: BLE001  (private API moved: leave JAX's own probing alone)
        return False
    if chips or jax.config.jax_platforms:
        return False
    jax.config.update("jax_platforms", "cpu")
    return True


def run(main):
    import logging
    from absl import app
    from absl import logging as absl_logging
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no libtpu" noise
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax's per-save INFO lines; --verbosity=0 restores
    skip_absent_tpu()

    def guarded(argv):
        try:
            return main(argv)
        except (UsageError, config_lib.ConfigError) as e:
            fail(str(e))

    app.run(guarded, flags_parser=parse_flags)


def run_stage(stage, workdir: str):
    """The body of the train and finetune CLIs: the persistent compilation cache,
    jax.distributed (fmjax.distributed), CPU runtime settings, `stage(config, workdir)`, its
    report (process 0 prints it); a startup failure or a NaN/inf loss exits 1 with the loop's
    message (step, last good checkpoint)."""
    import jax
    from fmjax.training import cpu_malloc, peak_flops
    from fmjax.training.loop import NonFiniteLoss
    config = load_config()
    if config.get("compilation_cache_dir"):  # before the first compile (JAX fixes its cache
        # there; the CPU peak probe below compiles too), for every program however quick
        jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    try:  # before anything touches devices
        distributed.initialize(distributed_options())
    except distributed.DistributedError as e:  # the cluster, not the command: exit 1
        raise SystemExit(f"error: {e}")
    if jax.default_backend() == "cpu":
        cpu_malloc.configure()  # keep XLA:CPU's per-step temporaries mapped (see the module)
        peak_flops.host_probe()  # the MFU peak, before any data pipeline thread shares the cores
    try:
        report = stage(config, workdir)
    except (NonFiniteLoss, distributed.DistributedError) as e:  # the run failed: exit 1
        raise SystemExit(f"error: {e}")
    if jax.process_index() == 0:
        print(report.text(), flush=True)
