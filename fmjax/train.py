"""python -m fmjax.train --config=configs/NAME.py --workdir=DIR [--config.a.b=value ...]"""
from absl import flags

from fmjax import cli

FLAGS = flags.FLAGS
cli.define_config_flag()
flags.DEFINE_string("workdir", None, "Run directory: config.json, metrics.jsonl, checkpoints/.")
flags.mark_flag_as_required("workdir")


def main(argv):
    cli.no_extra_args(argv)
    import jax
    from fmjax import cpu_runtime, trainer
    if jax.default_backend() == "cpu":
        cpu_runtime.configure()  # keep XLA:CPU's per-step temporaries mapped (see the module)
    from fmjax.loop import NonFiniteLoss
    try:
        report = trainer.train(cli.load_config(), FLAGS.workdir)
    except NonFiniteLoss as e:
        raise SystemExit(f"error: {e}")
    print(report.text(), flush=True)


if __name__ == "__main__":
    cli.run(main)
