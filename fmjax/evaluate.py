"""python -m fmjax.evaluate --workdir=RUN_DIR|--checkpoint=PATH --tasks=NAME[,NAME...]
[--num_fewshot=K] [--limit=N] [--batch_tokens=N] [--output=results.json]: zero- or few-shot
evaluation by lm-evaluation-harness's definitions (multiple choice: acc, acc_norm; rolling
log-likelihood: word/byte perplexity, bits per byte; generation: exact match) of a training
run's checkpoint, a fine-tuned one, an export or an imported HF model, on the mesh of all local
devices. A task is a registered name (fmjax/evals/NAME.py) or jsonl:PATH (a user's JSONL file;
fmjax/evals/jsonl.py). Prints a table per task; --output writes the harness's results layout.
"""
from absl import flags

from fmjax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory (its latest checkpoint, or --step's).")
flags.DEFINE_string("checkpoint", None, "Instead of --workdir: one checkpoint, a run's "
                    "checkpoints/STEP directory or an export (fmjax.export, fmjax.convert import).")
flags.DEFINE_list("tasks", None, "Comma-separated eval tasks: registered names or jsonl:PATH.")
flags.DEFINE_integer("num_fewshot", 0, "Solved examples before each question.")
flags.DEFINE_integer("limit", 0, "Score only each task's first N examples (0 = all).")
flags.DEFINE_integer("seed", 1234, "Seed of the few-shot draws.")
flags.DEFINE_integer("batch_tokens", 8192, "Tokens per forward pass (packed rows of the "
                     "model's length, or more of its shorter buckets).")
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.DEFINE_string("tokenizer", None, "Tokenizer file (SentencePiece .model or HF tokenizer.json) "
                    "to use instead of the checkpoint's.")
flags.DEFINE_string("output", None,
                    "Write the results here as JSON (lm-evaluation-harness layout).")
flags.mark_flags_as_required(["tasks"])


def main(argv):
    cli.no_extra_args(argv)
    import json
    from fmjax import evals
    from fmjax.evals import suite
    if FLAGS.num_fewshot < 0 or FLAGS.limit < 0 or FLAGS.batch_tokens < 1:
        raise cli.UsageError("--num_fewshot and --limit must be >= 0, --batch_tokens >= 1")
    source, flag = cli.checkpoint_source(FLAGS.workdir, FLAGS.checkpoint, FLAGS.step)
    for name in FLAGS.tasks:  # an unknown name fails before the checkpoint loads
        evals.get(name)
    engine, params, tokenizer, step = cli.load_checkpoint(source, FLAGS.step, FLAGS.tokenizer,
                                                          flag)
    batch_rows = max(1, FLAGS.batch_tokens // engine.model_config.seq_len)
    scores = suite.evaluate(engine, params, tokenizer, FLAGS.tasks, num_fewshot=FLAGS.num_fewshot,
                            limit=FLAGS.limit, seed=FLAGS.seed, batch_rows=batch_rows)
    print(suite.table(scores, FLAGS.num_fewshot))
    if FLAGS.output:
        results = suite.results_json(scores, num_fewshot=FLAGS.num_fewshot, limit=FLAGS.limit,
                                     model=f"{source} (step {step})")
        with open(FLAGS.output, "w") as f:
            json.dump(results, f, indent=2)
        print(f"results -> {FLAGS.output}")


if __name__ == "__main__":
    cli.run(main)
