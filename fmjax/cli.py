"""Shared flag handling for the thin CLIs: the ml_collections `--config` file flag with
`--config.a.b=value` overrides, checked against the schema with a did-you-mean."""
from __future__ import annotations

import importlib.util


from absl import flags
from ml_collections import config_flags

from fmjax import config as config_lib
from fmjax import distributed  # noqa: F401  (defines --coordinator_address etc.)

FLAGS = flags.FLAGS


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
    spec = importlib.util.spec_from_file_location("fmjax_user_config", path.split(":")[0])
    if spec is None or spec.loader is None:
        raise SystemExit(f"error: --config={path}: no such config file; see configs/")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    known = config_lib.flat_keys(module.get_config())
    for arg in argv:
        if arg.startswith("--config.") or arg.startswith("--noconfig."):
            key = arg.split("=", 1)[0].split("config.", 1)[1]
            if key not in known:
                raise SystemExit(f"error: unknown config key '{key}' in {arg!r}."
                                 f"{config_lib.did_you_mean(key, known)} All keys: fmjax/config.py")


def parse_flags(argv):
    """absl `flags_parser` for app.run: override keys checked first, then absl parsing."""
    check_override_keys(argv)
    try:
        return FLAGS(argv)
    except flags.Error as e:
        raise SystemExit(f"error: {e}")


def load_config():
    if FLAGS.config is None:
        raise SystemExit("error: --config is required, e.g. --config=configs/default.py")
    return FLAGS.config


def no_extra_args(argv):
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]}")


def skip_absent_tpu() -> bool:
    """Keeps JAX off the TPU backend when libtpu is installed but this host has no TPU chip
    and no GPU plugin: the test extra installs libtpu (for pre-flight's compile-only TPU
    targets, which do not need the backend), and libtpu's probe for a chip prints several
    lines of errors at every start otherwise. True if it set jax_platforms to cpu. A TPU VM,
    a GPU plugin or the user's JAX_PLATFORMS are left alone."""
    import os
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
    app.run(main, flags_parser=parse_flags)


def run_stage(stage, workdir: str):
    """The body of the train and finetune CLIs: the persistent compilation cache,
    jax.distributed (fmjax.distributed), CPU runtime settings, `stage(config, workdir)`, its
    report (process 0 prints it); a startup failure or a NaN/inf loss exits 1 with the loop's
    message (step, last good checkpoint)."""
    import jax
    from fmjax import cpu_runtime, flops
    from fmjax.loop import NonFiniteLoss
    config = load_config()
    if config.get("compilation_cache_dir"):  # before the first compile (JAX fixes its cache
        # there; the CPU peak probe below compiles too), for every program however quick
        jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    try:  # before anything touches devices
        distributed.initialize()
    except distributed.DistributedError as e:
        raise SystemExit(f"error: {e}")
    if jax.default_backend() == "cpu":
        cpu_runtime.configure()  # keep XLA:CPU's per-step temporaries mapped (see the module)
        flops.host_probe()  # the MFU peak, before any data pipeline thread shares the cores
    try:
        report = stage(config, workdir)
    except (NonFiniteLoss, distributed.DistributedError) as e:
        raise SystemExit(f"error: {e}")
    if jax.process_index() == 0:
        print(report.text(), flush=True)
