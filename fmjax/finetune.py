"""python -m fmjax.finetune --config=configs/finetune/NAME.py --workdir=FT_DIR
--config.init_from=PRETRAIN_WORKDIR [--config.a.b=value ...]"""
from absl import flags

from fmjax import cli

FLAGS = flags.FLAGS
cli.define_config_flag()
flags.DEFINE_string("workdir", None, "Fine-tune run directory (its own checkpoints, metrics).")
flags.mark_flag_as_required("workdir")


def main(argv):
    cli.no_extra_args(argv)
    import jax
    from fmjax import cpu_runtime, finetuner
    from fmjax.loop import NonFiniteLoss
    if jax.default_backend() == "cpu":
        cpu_runtime.configure()
    try:
        report = finetuner.finetune(cli.load_config(), FLAGS.workdir)
    except NonFiniteLoss as e:
        raise SystemExit(f"error: {e}")
    print(report.text(), flush=True)


if __name__ == "__main__":
    cli.run(main)
