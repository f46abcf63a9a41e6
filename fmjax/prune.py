"""python -m fmjax.prune --workdir=DIR [--step=N] | --checkpoint=PATH --sparsity=0.5
[--pattern=unstructured|2:4] [--method=magnitude] --output=PATH: one-shot pruning of the
block kernels (attention and MLP matmuls; embeddings, norms, biases and heads stay dense),
written as a params-only export (the format of fmjax.export) that generate, evaluate and
finetune (--config.init_from=PATH) load as any export. Unstructured: exactly --sparsity of
each matrix; N:M: N kept of every M along the contraction axis (--sparsity may be left out).
Gradual pruning while fine-tuning: config.prune (fmjax/config.py)."""
from absl import flags

from fmjax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory (its latest checkpoint, or --step's).")
flags.DEFINE_integer("step", None, "Checkpoint step of --workdir (default: latest).")
flags.DEFINE_string("checkpoint", None, "Instead of --workdir: a run's checkpoints/STEP "
                    "directory or an export (fmjax.export, fmjax.convert import, fmjax.prune).")
flags.DEFINE_string("method", "magnitude", "Registered weight score (fmjax/pruning/methods/): "
                    "magnitude | random; the lowest-scoring weights are zeroed.")
flags.DEFINE_float("sparsity", None, "Fraction of each block kernel's weights zeroed, in [0, 1); "
                   "for N:M patterns 1 - N/M (the default).")
flags.DEFINE_string("pattern", "unstructured", "unstructured (per matrix) or N:M, e.g. 2:4.")
flags.DEFINE_integer("seed", 0, "Seed of the random method's draws.")
flags.DEFINE_string("tokenizer", None, "Tokenizer file, for a checkpoint that stores none.")
flags.DEFINE_string("output", None, "Directory to write (must not exist).")
flags.mark_flags_as_required(["output"])

# config.prune.* in the library's messages -> this CLI's flags
FLAG_OF = {"config.prune.target_sparsity": "--sparsity", "config.prune.pattern": "--pattern",
           "config.prune.method": "--method"}


def main(argv):
    cli.no_extra_args(argv)
    import os
    from fmjax import config as config_lib
    from fmjax.pruning import one_shot
    from fmjax.training import checkpoint
    source, flag = cli.checkpoint_source(FLAGS.workdir, FLAGS.checkpoint, FLAGS.step)
    if os.path.exists(FLAGS.output):
        raise cli.UsageError(f"--output={FLAGS.output} exists; choose a new directory")
    try:  # flag mistakes fail before the checkpoint loads
        one_shot.resolve(FLAGS.method, FLAGS.sparsity, FLAGS.pattern)
        engine, params, _, step = cli.load_checkpoint(source, FLAGS.step, FLAGS.tokenizer, flag)
        step_source = source if FLAGS.step is None else os.path.join(
            checkpoint.checkpoint_dir(source), str(FLAGS.step))
        path, summary = one_shot.export(step_source, FLAGS.output, engine, params,
                                        method=FLAGS.method, sparsity=FLAGS.sparsity,
                                        pattern=FLAGS.pattern, seed=FLAGS.seed)
    except config_lib.ConfigError as e:
        message = str(e)
        for field, flag in FLAG_OF.items():
            message = message.replace(field, flag)
        raise cli.UsageError(message) from None
    print(summary.text())
    print(f"pruned step {step} of {source} -> {path}")


if __name__ == "__main__":
    cli.run(main)
