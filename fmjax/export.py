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
    from fmjax.training import params_export
    from fmjax.training.checkpoint import NotACheckpoint
    try:
        path, step, num_params = params_export.export(FLAGS.workdir, FLAGS.output, step=FLAGS.step)
    except NotACheckpoint as e:
        raise cli.UsageError(f"--workdir={FLAGS.workdir} (--step={FLAGS.step}): {e}; pass a "
                             "directory written by fmjax.train or fmjax.finetune") from None
    except FileExistsError as e:
        raise cli.UsageError(str(e)) from None
    print(f"exported step {step} of {FLAGS.workdir}: {num_params:,} parameters -> {path}")


if __name__ == "__main__":
    cli.run(main)
