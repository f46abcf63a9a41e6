"""python -m fmjax.export --workdir=DIR [--step=N] | --checkpoint=PATH --output=PATH
[--format=params|stablehlo]:

  params     (default) a params-only checkpoint (params, config, tokenizer, checksums; no
             optimizer state; LoRA adapters merged) for fine-tuning (`--config.init_from=PATH`)
             and for sharing (fmjax/training/params_export.py). A quantized checkpoint is
             refused: it is one already.
  stablehlo  a serving artifact that runs without fmjax: jax.export-serialized prefill and
             decode functions (polymorphic in batch and prompt length), weights.npz, the
             tokenizer file and manifest.json [--max_length=N --platforms=cpu,cuda,tpu
             --tokenizer=PATH] (fmjax/generation/stablehlo_export.py; the reader:
             examples/stablehlo_generate.py; docs/deployment.md). Decoders and T5; quantized
             checkpoints export their integers and scales.
"""
from absl import flags

from fmjax import cli

FORMATS = ("params", "stablehlo")
STABLEHLO_ONLY = ("max_length", "platforms", "tokenizer")  # flags --format=params refuses

FLAGS = flags.FLAGS
flags.DEFINE_string("format", "params", f"What to write: {' or '.join(FORMATS)}.")
flags.DEFINE_string("workdir", None, "Run directory written by fmjax.train or fmjax.finetune.")
flags.DEFINE_string("checkpoint", None, "A checkpoint step directory or an export (instead of "
                    "--workdir).")
flags.DEFINE_integer("step", None, "Checkpoint step of --workdir (default: latest).")
flags.DEFINE_string("output", None, "Directory to write (must not exist).")
flags.DEFINE_integer("max_length", None, "stablehlo: cache length, prompt + new tokens "
                     "(default: the model's training length).")
flags.DEFINE_list("platforms", None, "stablehlo: platforms to lower for (default: cpu,cuda,tpu).")
flags.DEFINE_string("tokenizer", None, "stablehlo: tokenizer file to ship when the checkpoint "
                    "stores none (SentencePiece .model or tokenizer.json).")
flags.mark_flag_as_required("output")


def _checked_flags() -> tuple[str, str]:
    """(source path, its flag) after the checks that need no checkpoint."""
    from fmjax.generation import stablehlo_export
    if FLAGS.format not in FORMATS:
        raise cli.UsageError(f"--format={FLAGS.format}: unknown format; use --format=params "
                             "(a params-only checkpoint) or --format=stablehlo (a serving "
                             "artifact)")
    source, flag = cli.checkpoint_source(FLAGS.workdir, FLAGS.checkpoint, FLAGS.step)
    if FLAGS.format == "params":
        for name in STABLEHLO_ONLY:
            if FLAGS[name].present:
                raise cli.UsageError(f"--{name}={FLAGS[name].serialize().split('=', 1)[-1]} "
                                     "applies to --format=stablehlo only; add it or drop "
                                     f"--{name}")
    unknown = [p for p in FLAGS.platforms or () if p not in stablehlo_export.KNOWN_PLATFORMS]
    if unknown:
        raise cli.UsageError(f"--platforms={','.join(FLAGS.platforms)}: unknown platform "
                             f"{unknown[0]!r}; use a comma-separated subset of "
                             f"{','.join(stablehlo_export.KNOWN_PLATFORMS)}")
    return source, flag


def main(argv):
    cli.no_extra_args(argv)
    from fmjax.generation import loading, stablehlo_export
    from fmjax.training import params_export
    from fmjax.training.checkpoint import NotACheckpoint
    source, flag = _checked_flags()
    try:
        if FLAGS.format == "params":
            path, step, num_params = params_export.export(source, FLAGS.output, step=FLAGS.step,
                                                          field=flag)
            print(f"exported step {step} of {source}: {num_params:,} parameters -> {path}")
            return
        result = stablehlo_export.export_stablehlo(
            source, FLAGS.output, step=FLAGS.step, max_length=FLAGS.max_length,
            platforms=tuple(FLAGS.platforms or stablehlo_export.PLATFORMS),
            tokenizer_path=FLAGS.tokenizer)
    except NotACheckpoint as e:
        step = "" if FLAGS.step is None else f" --step={FLAGS.step}"
        raise cli.UsageError(f"{flag}={source}{step}: {e}; pass a directory "
                             "written by fmjax.train or fmjax.finetune, one of its "
                             "checkpoints/STEP directories, or an export") from None
    except (FileExistsError, loading.NoTokenizer, stablehlo_export.CannotExport) as e:
        raise cli.UsageError(str(e)) from None
    print(f"exported {result.family} ({'export' if result.step < 0 else f'step {result.step}'}"
          f" of {source}) for serving: prefill + decode, max_length {result.max_length}, "
          f"{result.weights_bytes:,} bytes of weights -> {result.path}")


if __name__ == "__main__":
    cli.run(main)
