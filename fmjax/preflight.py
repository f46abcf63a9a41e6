"""python -m fmjax.preflight --config=configs/NAME.py --topology=v5p-128 [--num_slices=N]
[--step_time=S] [--save_compiled=PATH] [--fast] [--config.a.b=v ...]

Compiles the real train step for a TPU slice from any host (libtpu's compile-only devices;
nothing is allocated) or for this machine (--topology=local or cpu:N), and says whether it
fits: per-device memory against the device's, model FLOPs per step and the step time each MFU
means, compile time, and, when it does not fit, the overrides that would help. The last line
is JSON. Exit status: 0 fits, 1 does not fit, 2 could not pre-flight (bad topology, config or
libtpu). The library: fmjax/aot/compile.py (compile, save), fmjax/aot/targets.py (slices, this machine),
fmjax/aot/fit_report.py (the verdict); slice names are translated by fmjax/aot/tpu_slices.py."""
import json
import os
import sys

from absl import flags

from fmjax import cli

FLAGS = flags.FLAGS
cli.define_config_flag()
flags.DEFINE_string("topology", None, "Target: a TPU slice (v5p-128, v5litepod-256, v6e-64, "
                    "v4-32, tpu7x-128), a topology (v5p:4x4x4, v5e:16x16), 'local' (this "
                    "process's devices) or cpu:N. Default: the config's hardware.tpu_slice.")
flags.DEFINE_integer("num_slices", 1, "TPU slices joined over the data-center network.")
flags.DEFINE_float("step_time", None, "A measured or hoped-for step time in seconds: prints "
                   "the MFU it means.")
flags.DEFINE_string("save_compiled", "", "Write the serialized compiled step here "
                    "(fmjax.aot.compile.load_compiled reads it on the target).")
flags.DEFINE_bool("fast", False, "Compile with XLA's lowest execution-time optimisation "
                  "effort: compiles faster; the memory peak can come out a few percent higher than by default.")


def _fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    print(json.dumps({"fits": None, "error": message}))
    sys.exit(2)


def main(argv):
    cli.no_extra_args(argv)
    config = cli.load_config()
    topology = FLAGS.topology or config.hardware.tpu_slice
    if not topology:
        _fail("--topology is required (the config declares no hardware.tpu_slice), e.g. "
              "--topology=v5p-128, or local, or cpu:8")
    import jax
    if topology.startswith("cpu:") and topology[4:].isdigit():
        jax.config.update("jax_num_cpu_devices", int(topology[4:]))  # before any device exists
    elif topology != "local" and not os.environ.get("JAX_PLATFORMS"):
        # a TPU target needs libtpu's compile-only devices, never this host's accelerators
        # (on a TPU VM that would take the chips from a run in progress)
        jax.config.update("jax_platforms", "cpu")
    from fmjax.aot import compile as aot, fit_report, targets, tpu_slices
    from fmjax import config as config_lib
    try:
        result = aot.run(config, topology, num_slices=FLAGS.num_slices, fast=FLAGS.fast,
                         save_path=FLAGS.save_compiled)
    except (targets.PreflightError, tpu_slices.SliceError, config_lib.ConfigError) as e:
        _fail(str(e))
    for line in fit_report.report_lines(result, FLAGS.step_time):
        print(line)
    if FLAGS.save_compiled and result.compiled is not None:
        print(f"saved     {FLAGS.save_compiled} (fmjax.aot.compile.load_compiled loads it on the target)")
    print(fit_report.to_json(result, FLAGS.step_time), flush=True)
    sys.exit(0 if result.fits else 1)


if __name__ == "__main__":
    cli.run(main)
