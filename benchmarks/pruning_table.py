"""Validation loss against sparsity for a pretrained run, one-shot and with recovery, in one
run on this machine:

  python benchmarks/pruning_table.py --workdir=runs/default [--steps=50] [--out=DIR]
      [--rows=0,0.5,2:4,0.75,0.9] [--gradual]

For each row (a sparsity, or an N:M pattern):
  one-shot    python -m fmjax.prune --workdir=W --sparsity=S (or --pattern=2:4) --output=...:
              magnitude pruning of every block kernel (attention and MLP matmuls; embeddings,
              norms, biases, the tied head dense), exactly S of each matrix;
  recovery    python -m fmjax.finetune --config=configs/default.py --config.task.name=lm from
              that export for --steps steps with its masks held (config.prune: the same
              sparsity at step 1, so the zeros stay zeros), on the same corpus;
  gradual     (--gradual) the same fine-tune from the dense run, the sparsity ramped (cubic)
              from 0 at step 0 to S at --steps / 2, then held.
Row 0 fine-tunes the dense model the same number of steps: the fair baseline for recovery,
since more training on the same corpus lowers the loss by itself. Every loss is the
fine-tune's own validation pass (the pretraining run's validation split, train.eval_batches
batches): step 0 for one-shot, the last step for the others. Prints a markdown table; the last
line is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(module: str, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{module} failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
    return result.stdout


def evals(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if "eval_loss" in r]


def prune_flags(row: str, prefix: str) -> list[str]:
    """--sparsity / --pattern (prefix "--") or config.prune.* (prefix "--config.prune.")."""
    if ":" in row:
        n, m = (int(x) for x in row.split(":"))
        sparsity = f"{1 - n / m:g}"
        return ([f"{prefix}pattern={row}"] if prefix == "--" else
                [f"{prefix}pattern={row}", f"{prefix}target_sparsity={sparsity}"])
    return [f"{prefix}sparsity={row}" if prefix == "--" else f"{prefix}target_sparsity={row}"]


def finetune(init_from: str, workdir: str, steps: int, prune: list[str]) -> dict:
    if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        run("fmjax.finetune", "--config=configs/default.py", "--config.task.name=lm",
            f"--config.init_from={init_from}", f"--workdir={workdir}",
            f"--config.train.steps={steps}", f"--config.train.eval_every={steps}",
            f"--config.train.checkpoint_every={steps}", "--config.eval.tasks=",
            "--config.optim.learning_rate=1e-3", f"--config.optim.warmup_steps={steps // 10}",
            *prune)
    rows = evals(workdir)
    return {"step0": rows[0]["eval_loss"], "final": rows[-1]["eval_loss"],
            "sparsity": rows[-1].get("sparsity", 0.0)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="pretrained run (fmjax.train)")
    parser.add_argument("--steps", type=int, default=50, help="recovery fine-tuning steps")
    parser.add_argument("--rows", default="0,0.5,2:4,0.75,0.9")
    parser.add_argument("--out", default="/tmp/fmjax-pruning-table")
    parser.add_argument("--gradual", action="store_true", help="also prune gradually")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    results = []
    for row in args.rows.split(","):
        name = row.replace(":", "of")
        if row in ("0", "0.0"):
            dense = finetune(args.workdir, os.path.join(args.out, "ft_dense"), args.steps, [])
            result = {"row": "0 (dense)", "one_shot": dense["step0"], "recovered": dense["final"],
                      "sparsity": 0.0}
            if args.gradual:
                result["gradual"] = dense["final"]
        else:
            export = os.path.join(args.out, f"oneshot_{name}")
            if not os.path.exists(export):
                run("fmjax.prune", f"--workdir={args.workdir}", f"--output={export}",
                    *prune_flags(row, "--"))
            tuned = finetune(export, os.path.join(args.out, f"ft_{name}"), args.steps,
                             prune_flags(row, "--config.prune.") + ["--config.prune.end_step=1"])
            result = {"row": row if ":" in row else f"{float(row):.0%}", "one_shot": tuned["step0"],
                      "recovered": tuned["final"], "sparsity": tuned["sparsity"]}
            if args.gradual:
                ramp = [f"--config.prune.end_step={args.steps // 2}",
                        f"--config.prune.frequency={max(args.steps // 10, 1)}"]
                result["gradual"] = finetune(
                    args.workdir, os.path.join(args.out, f"gradual_{name}"), args.steps,
                    prune_flags(row, "--config.prune.") + ramp)["final"]
        results.append(result)
        print(json.dumps(result), flush=True)
    header = ["sparsity (block kernels)", "one-shot val loss",
              f"+ recovery ({args.steps} steps)"] + (
        [f"gradual ({args.steps} steps)"] if args.gradual else [])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        cells = [r["row"], f"{r['one_shot']:.4f}", f"{r['recovered']:.4f}"] + (
            [f"{r['gradual']:.4f}"] if args.gradual else [])
        print("| " + " | ".join(cells) + " |")
    print(f"settings: workdir={args.workdir} steps={args.steps} lr=1e-3 warmup={args.steps // 10}"
          f" wall={time.time() - start:.0f}s")
    print(json.dumps({"workdir": args.workdir, "steps": args.steps, "rows": results}))


if __name__ == "__main__":
    main()
