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
    from fmjax.training import finetune_stage
    cli.run_stage(finetune_stage.finetune, FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main)
