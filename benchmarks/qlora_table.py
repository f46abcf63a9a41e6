"""QLoRA against float LoRA and full fine-tuning on the README main job's fine-tune task
(configs/finetune/default.py), from one pretrained workdir, in one run on this machine:

  python benchmarks/qlora_table.py --workdir=runs/default [--steps=100] [--rank=8]
      [--schemes=int8,int4] [--group_size=128] [--out=DIR]

  full       python -m fmjax.finetune --config=configs/finetune/default.py (every weight trains)
  LoRA       the same with --config.lora.rank=R over the float pretrained weights
  QLoRA S    python -m fmjax.quantize --checkpoint=WORKDIR --scheme=S, then the same LoRA
             fine-tune with --config.init_from=that quantized checkpoint: the base stays its
             integers, the adapters and the new head train (fmjax/quantization/qlora.py)
Every run has the same seed, steps, batch and learning rate. Scores are
fmjax.tasks.checkpoint_eval's of each run's best/ (accuracy and macro F1 on all validation
functions; a QLoRA export is scored as stored, integers dequantized inside the model). Also:
parameters trained, the params + optimizer state of the last train checkpoint (bytes on disk:
what a run holds besides activations), the fine-tune process's peak RSS, and its median
training tokens/s (metrics.jsonl, steps after the first 10). Prints the settings and a markdown table;
the last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qat_vs_ptq import ROOT, pick, quantize  # noqa: E402  (the same steps, one home)

# runs `python -m fmjax.finetune ARGS` and prints its peak resident set size last
PEAK_RSS_RUNNER = ("import resource, runpy, sys\n"
                   "sys.argv = ['fmjax.finetune'] + sys.argv[1:]\n"
                   "try:\n    runpy.run_module('fmjax.finetune', run_name='__main__')\n"
                   "finally:\n    print('peak_rss_kib', resource.getrusage("
                   "resource.RUSAGE_SELF).ru_maxrss, flush=True)\n")


def finetune(init_from: str, workdir: str, steps: int, extra: list[str]) -> dict:
    """Fine-tunes into `workdir` (unless done: then its saved facts); wall seconds, peak RSS."""
    facts_path = os.path.join(workdir, "bench_facts.json")
    if os.path.exists(facts_path):
        with open(facts_path) as f:
            return json.load(f)
    start = time.time()
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_RUNNER, "--config=configs/finetune/default.py",
         f"--config.init_from={init_from}", f"--workdir={workdir}",
         f"--config.train.steps={steps}", f"--config.train.checkpoint_every={steps}", *extra],
        cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"fine-tune {workdir} failed:\n{result.stdout[-2000:]}"
                         f"{result.stderr[-3000:]}")
    trained = [line for line in result.stdout.splitlines() if " trained; mesh " in line][0]
    facts = {"wall_s": round(time.time() - start, 1),
             "peak_rss_mib": int(result.stdout.split("peak_rss_kib")[-1].split()[0]) // 1024,
             "trained": int(trained.split(" trained; mesh ")[0].split(", ")[-1].replace(",", ""))}
    with open(facts_path, "w") as f:
        json.dump(facts, f)
    return facts


def state_bytes(workdir: str, step: int) -> int:
    """Bytes on disk of the train checkpoint of `step` (params + optimizer state)."""
    root = os.path.join(workdir, "checkpoints", str(step))
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root)
               for f in files)


def median_tokens_per_second(workdir: str) -> float:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [r for r in map(json.loads, f) if "tokens_per_sec" in r and r["step"] > 10]
    return statistics.median(r["tokens_per_sec"] for r in rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="pretrained run (fmjax.train)")
    parser.add_argument("--steps", type=int, default=100, help="fine-tune steps (default: the "
                        "main job's 100)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha: the config's)")
    parser.add_argument("--schemes", default="int8,int4", help="comma-separated: int8,int4")
    parser.add_argument("--group_size", type=int, default=128, help="int4 group size")
    parser.add_argument("--out", default="/tmp/fmjax-qlora-table")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    pretrained = os.path.abspath(args.workdir)
    from fmjax.tasks import checkpoint_eval
    lora = [f"--config.lora.rank={args.rank}"]
    runs = [("fp32", "full", pretrained, []), ("fp32", f"LoRA r{args.rank}", pretrained, lora)]
    for scheme in args.schemes.split(","):
        base = os.path.join(args.out, f"base_{scheme}")
        quantize(pretrained, base, scheme, args.group_size)
        runs.append((scheme, f"QLoRA r{args.rank}", base, lora))
    rows = []
    for weights, training, init_from, extra in runs:
        workdir = os.path.join(args.out, f"{weights}_{training.split()[0].lower()}")
        facts = finetune(init_from, workdir, args.steps, extra)
        rows.append({"base": weights, "training": training, **facts,
                     **pick(checkpoint_eval.evaluate_checkpoint(os.path.join(workdir, "best"))),
                     "state_bytes": state_bytes(workdir, args.steps),
                     "tokens_per_s": median_tokens_per_second(workdir)})

    print(f"settings: pretrained={pretrained} fine-tune=configs/finetune/default.py "
          f"steps={args.steps} rank={args.rank} schemes={args.schemes} "
          f"group_size(int4)={args.group_size} cpus={os.cpu_count()} out={args.out}")
    print(f"total wall seconds {time.time() - start:.0f}")
    print("| base weights | fine-tuning | adapter params trained | accuracy | macro F1 | eval loss | "
          "params + optimizer state | peak RSS | tokens/s (median) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['base']} | {r['training']} | {r['trained']:,} | {r['accuracy']:.4f} | "
              f"{r['f1']:.4f} | {r['loss']:.4f} | {r['state_bytes']:,} B | "
              f"{r['peak_rss_mib']:,} MiB | {r['tokens_per_s']:,.0f} |")
    print(json.dumps({"pretrained": pretrained, "steps": args.steps, "rank": args.rank,
                      "schemes": args.schemes, "group_size": args.group_size, "rows": rows,
                      "total_seconds": round(time.time() - start)}))


if __name__ == "__main__":
    main()
