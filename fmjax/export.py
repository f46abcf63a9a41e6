"""python -m fmjax.export --workdir=DIR [--step=N] --output=PATH [--merge_lora]: writes a
params-only checkpoint (params, config, tokenizer, checksums; no optimizer state) for
fine-tuning (`--config.init_from=PATH`) and for sharing."""
from absl import flags

from fmjax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory written by fmjax.train or fmjax.finetune.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.DEFINE_string("output", None, "Directory to write (must not exist).")
flags.mark_flags_as_required(["workdir", "output"])


def main(argv):
    cli.no_extra_args(argv)
    from fmjax import exporting
    path, step, num_params = exporting.export(FLAGS.workdir, FLAGS.output, step=FLAGS.step)
    print(f"exported step {step} of {FLAGS.workdir}: {num_params:,} parameters -> {path}")


if __name__ == "__main__":
    cli.run(main)
