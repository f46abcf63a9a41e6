"""python -m fmjax.evaluate --workdir=DIR --tasks=NAME[,NAME...] [--num_fewshot=K] [--limit=N]
[--output=results.json]: zero- or few-shot multiple choice by log-likelihood
(lm-evaluation-harness's acc and acc_norm) on a training run's checkpoint, a fine-tuned one or
an export. A task is a registered name (fmjax/evals/NAME.py) or jsonl:PATH (a JSONL file of
{"context", "choices", "gold"} records). Prints a table; --output writes the harness's results
layout."""
from absl import flags

from fmjax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None,
                    "Run directory, one of its checkpoint step dirs, or an export.")
flags.DEFINE_list("tasks", None, "Comma-separated eval tasks: registered names or jsonl:PATH.")
flags.DEFINE_integer("num_fewshot", 0, "Solved examples before each question.")
flags.DEFINE_integer("limit", 0, "Score only each task's first N examples (0 = all).")
flags.DEFINE_integer("seed", 1234, "Seed of the few-shot draws.")
flags.DEFINE_integer("batch_rows", 8, "Packed rows per forward pass.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.DEFINE_string("tokenizer", None, "Tokenizer file (SentencePiece .model or HF tokenizer.json) "
                    "to use instead of the checkpoint's.")
flags.DEFINE_string("output", None,
                    "Write the results here as JSON (lm-evaluation-harness layout).")
flags.mark_flags_as_required(["workdir", "tasks"])


def main(argv):
    cli.no_extra_args(argv)
    import json
    from fmjax import evals
    from fmjax.evals import suite
    if FLAGS.num_fewshot < 0 or FLAGS.limit < 0:
        raise cli.UsageError("--num_fewshot and --limit must be >= 0")
    for name in FLAGS.tasks:  # an unknown name fails before the checkpoint loads
        evals.get(name)
    engine, params, tokenizer, step = cli.load_checkpoint(FLAGS.workdir, FLAGS.step,
                                                          FLAGS.tokenizer)
    scores = suite.evaluate(engine, params, tokenizer, FLAGS.tasks, num_fewshot=FLAGS.num_fewshot,
                            limit=FLAGS.limit, seed=FLAGS.seed, batch_rows=FLAGS.batch_rows)
    print(suite.table(scores, FLAGS.num_fewshot))
    if FLAGS.output:
        results = suite.results_json(scores, num_fewshot=FLAGS.num_fewshot, limit=FLAGS.limit,
                                     model=f"{FLAGS.workdir} (step {step})")
        with open(FLAGS.output, "w") as f:
            json.dump(results, f, indent=2)
        print(f"results -> {FLAGS.output}")


if __name__ == "__main__":
    cli.run(main)
