"""python -m fmjax.quantize --workdir=DIR|--checkpoint=PATH --scheme=int8|int4 [--group_size=128]
--output=PATH: post-training quantization of a run's latest checkpoint (or --step's), one
checkpoint directory or an export (fmjax.export, fmjax.convert import). Every Dense kernel and
embedding table becomes integers plus float32 scales (symmetric; int8 per output channel, int4
per output channel and group of --group_size consecutive contracted inputs), written as an
export with its config (marked with the scheme) and tokenizer. fmjax.evaluate and
fmjax.generate load it and multiply the integers by their scales inside the jitted model;
fmjax.finetune and `fmjax.convert export` refuse it (fmjax/quantization/).
"""
from absl import flags

from fmjax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory (its latest checkpoint, or --step's).")
flags.DEFINE_string("checkpoint", None, "Instead of --workdir: a run's checkpoints/STEP "
                    "directory or an export (fmjax.export, fmjax.convert import).")
flags.DEFINE_integer("step", None, "Checkpoint step of --workdir (default: latest).")
flags.DEFINE_string("scheme", None, "int8 (per output channel) | int4 (per output channel "
                    "and group of --group_size inputs).")
flags.DEFINE_integer("group_size", 128, "int4: contracted inputs that share a scale; must tile "
                     "every weight's contraction (the error lists the sizes that do).")
flags.DEFINE_string("output", None, "Directory to write (must not exist).")
flags.mark_flags_as_required(["scheme", "output"])


def main(argv):
    cli.no_extra_args(argv)
    import os
    from fmjax.quantization import ptq, schemes
    from fmjax.training import checkpoint
    source, flag = cli.checkpoint_source(FLAGS.workdir, FLAGS.checkpoint, FLAGS.step)
    scheme = schemes.get(FLAGS.scheme)  # an unknown name fails before anything is read
    if not scheme.grouped and FLAGS["group_size"].present:
        raise cli.UsageError(f"--group_size={FLAGS.group_size}: --scheme={scheme.name} has one "
                             "scale per output channel, no groups; drop --group_size or use "
                             "--scheme=int4")
    if FLAGS.step is not None:
        source = os.path.join(checkpoint.checkpoint_dir(FLAGS.workdir), str(FLAGS.step))
    try:
        result = ptq.quantize_checkpoint(source, FLAGS.output, scheme.name, FLAGS.group_size)
    except checkpoint.NotACheckpoint as e:
        raise cli.UsageError(f"{flag}={source}: {e}; pass a directory written by fmjax.train or "
                             "fmjax.finetune, one of its checkpoints/STEP directories, or an "
                             "export") from None
    except FileExistsError as e:
        raise cli.UsageError(str(e)) from None
    group = f", groups of {result.group_size}" if result.group_size else ", per channel"
    print(f"quantized {source} -> {result.path}: {result.scheme}{group}; {result.weights} "
          f"weights: {result.quantized_params:,} values as {result.scheme} + "
          f"{result.scales:,} float32 scales; {result.float_params:,} values kept in float "
          f"(norms, biases); params {result.bytes_on_disk:,} bytes on disk")


if __name__ == "__main__":
    cli.run(main)
