"""python -m fmjax.train --config=configs/NAME.py --workdir=DIR [--config.a.b=value ...]"""
from absl import flags

from fmjax import cli

FLAGS = flags.FLAGS
cli.define_config_flag()
flags.DEFINE_string("workdir", None, "Run directory: config.json, metrics.jsonl, checkpoints/.")
flags.mark_flag_as_required("workdir")


def main(argv):
    cli.no_extra_args(argv)
    from fmjax.training import pretrain_stage
    cli.run_stage(pretrain_stage.train, FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main)
