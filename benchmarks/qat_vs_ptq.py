"""Post-training quantization against quantization-aware fine-tuning on the README main job's
fine-tune task (configs/finetune/default.py: which stdlib package a function comes from), from
one pretrained workdir, in one run on this machine:

  python benchmarks/qat_vs_ptq.py --workdir=runs/default [--steps=100] [--schemes=int8]
      [--seeds=0] [--group_size=128] [--out=DIR]

  float      python -m fmjax.finetune --config=configs/finetune/default.py (train.steps=--steps)
             -> best/ (float weights), scored as they are (fp32);
  PTQ        python -m fmjax.quantize --checkpoint=float/best --scheme=S -> scored;
  QAT        the same fine-tune with --config.qat.scheme=S (weights fake-quantized in every
             forward pass, straight-through gradients) -> best/ -> python -m fmjax.quantize
             --scheme=S -> scored (and its float weights scored without fake quantization).
Every score is fmjax.tasks.checkpoint_eval's: the fine-tune task's own evaluation (accuracy and
macro F1 on all validation functions) of the checkpoint as stored, integers dequantized inside
the model. The QAT run's own final evaluation (fake-quantized) must equal its int8 export's
score: that is checked and printed. Per seed (config.seed: head init and data order) both
fine-tunes start alike and differ only in the fake quantization; more seeds show how far two
100-step fine-tunes land apart by chance. Prints the settings and a markdown table; the last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run(module: str, *args: str) -> float:
    """Runs `python -m module args` in the repository; its wall seconds."""
    start = time.time()
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{module} failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
    return time.time() - start


def finetune(pretrained: str, workdir: str, steps: int, extra: list[str]) -> float:
    """Fine-tunes into `workdir` unless it finished already; wall seconds (0 if reused)."""
    if os.path.isdir(os.path.join(workdir, "best")):
        return 0.0
    return run("fmjax.finetune", "--config=configs/finetune/default.py",
               f"--config.init_from={pretrained}", f"--workdir={workdir}",
               f"--config.train.steps={steps}", f"--config.train.checkpoint_every={steps}",
               *extra)


def quantize(source: str, output: str, scheme: str, group_size: int) -> float:
    if os.path.isdir(output):
        return 0.0
    return run("fmjax.quantize", f"--checkpoint={source}", f"--scheme={scheme}",
               f"--output={output}", *([f"--group_size={group_size}"] if scheme == "int4" else []))


def last_eval(workdir: str) -> dict:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "eval_f1" in r][-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="pretrained run (fmjax.train)")
    parser.add_argument("--steps", type=int, default=100, help="fine-tune steps (default: the "
                        "main job's 100)")
    parser.add_argument("--schemes", default="int8", help="comma-separated: int8,int4")
    parser.add_argument("--seeds", default="0", help="comma-separated config.seed values (head "
                        "init, data order): each seed fine-tunes float and QAT once more")
    parser.add_argument("--group_size", type=int, default=128, help="int4 group size")
    parser.add_argument("--out", default="/tmp/fmjax-qat-vs-ptq")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    pretrained = os.path.abspath(args.workdir)
    rows, checks, times = [], {}, {}
    for seed in (int(s) for s in args.seeds.split(",")):
        out = os.path.join(args.out, f"seed{seed}")
        seed_rows, seed_checks, seed_times = compare(pretrained, out, seed, args)
        rows += [{"seed": seed, **r} for r in seed_rows]
        checks.update({f"seed{seed} {k}": v for k, v in seed_checks.items()})
        times.update({f"seed{seed} {k}": v for k, v in seed_times.items()})

    print(f"settings: pretrained={pretrained} fine-tune=configs/finetune/default.py "
          f"steps={args.steps} seeds={args.seeds} schemes={args.schemes} "
          f"group_size(int4)={args.group_size} cpus={os.cpu_count()} out={args.out}")
    print("wall seconds (0 = reused): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items())
          + f"; total {time.time() - start:.0f}")
    for name, diff in checks.items():
        print(f"{name}: the QAT run's own fake-quantized evaluation vs its export's score: "
              f"|accuracy diff| {diff['accuracy']:.2g}, |F1 diff| {diff['f1']:.2g}")
    print("| weights | fine-tuning | seed | accuracy | macro F1 | eval loss |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['weights']} | {r['training']} | {r['seed']} | {r['accuracy']:.4f} | "
              f"{r['f1']:.4f} | {r['loss']:.4f} |")
    if len({r["seed"] for r in rows}) > 1:
        print_means(rows)
    print(json.dumps({"pretrained": pretrained, "steps": args.steps, "seeds": args.seeds,
                      "schemes": args.schemes, "group_size": args.group_size, "rows": rows,
                      "checks": checks, "wall_seconds": times,
                      "total_seconds": round(time.time() - start)}))


def compare(pretrained: str, out: str, seed: int, args) -> tuple[list, dict, dict]:
    """(rows, checks, wall seconds) of one seed: the float fine-tune scored as it is and after
    PTQ, and per scheme the QAT fine-tune's float weights and export scored."""
    from fmjax.tasks import checkpoint_eval
    score = lambda path: pick(checkpoint_eval.evaluate_checkpoint(path))  # noqa: E731
    seed_flag = [f"--config.seed={seed}"]
    float_dir = os.path.join(out, "float")
    times = {"float": finetune(pretrained, float_dir, args.steps, seed_flag)}
    rows = [{"weights": "fp32", "training": "float", **score(os.path.join(float_dir, "best"))}]
    checks = {}
    for scheme in args.schemes.split(","):
        ptq_dir = os.path.join(out, f"float_{scheme}")
        times[f"quantize_{scheme}"] = quantize(os.path.join(float_dir, "best"), ptq_dir, scheme,
                                               args.group_size)
        rows.append({"weights": scheme, "training": "float (PTQ)", **score(ptq_dir)})
        qat_dir = os.path.join(out, f"qat_{scheme}")
        times[f"qat_{scheme}"] = finetune(
            pretrained, qat_dir, args.steps, seed_flag + [
                f"--config.qat.scheme={scheme}", f"--config.qat.group_size={args.group_size}"])
        export = os.path.join(out, f"qat_{scheme}_export")
        quantize(os.path.join(qat_dir, "best"), export, scheme, args.group_size)
        qat_row = {"weights": scheme, "training": f"QAT {scheme}", **score(export)}
        in_training = pick(last_eval(qat_dir))
        checks[f"QAT {scheme}"] = {k: abs(qat_row[k] - in_training[k]) for k in ("accuracy", "f1")}
        rows.append({"weights": "fp32", "training": f"QAT {scheme} (float weights, no fake "
                     "quantization)", **score(os.path.join(qat_dir, "best"))})
        rows.append(qat_row)
    return rows, checks, times


def print_means(rows: list[dict]) -> None:
    """The markdown table of each (weights, fine-tuning) row's mean and range over the seeds."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["weights"], r["training"]), []).append(r)
    print("| weights | fine-tuning | accuracy, mean (range) | macro F1, mean (range) |")
    print("|---|---|---|---|")
    for (weights, training), group in groups.items():
        cells = []
        for key in ("accuracy", "f1"):
            values = [r[key] for r in group]
            cells.append(f"{sum(values) / len(values):.4f} ({min(values):.4f}-{max(values):.4f})")
        print(f"| {weights} | {training} | {cells[0]} | {cells[1]} |")


def pick(metrics: dict) -> dict:
    return {"accuracy": metrics["eval_accuracy"], "f1": metrics["eval_f1"],
            "loss": metrics["eval_loss"], "baseline": metrics["eval_majority_baseline"]}


if __name__ == "__main__":
    main()
