"""Post-training quantization, measured: fp32, int8 and int4 of (a) the main job's model
(configs/default.py, trained --steps steps here unless --run names a finished run) and (b) a
tiny random GPT-2 imported from Hugging Face (fmjax/hf/tiny_models.py), in one run.

  python benchmarks/quantization_table.py [--run=DIR] [--steps=150] [--workdir=/tmp/qtable]

Per checkpoint (fp32 = the params-only export fmjax.export writes, or the import itself;
int8/int4 = python -m fmjax.quantize of it):
  params bytes   the checkpoint's params/ directory on disk (orbax, zstd-compressed), and the
                 ratio to fp32's
  params memory  bytes of the loaded params as jax counts them (int4: one byte per value)
  peak RSS       ru_maxrss of a fresh process that loads the checkpoint (load_run) and
                 generates (sampling.sample_texts: the code path of python -m fmjax.generate)
  tokens/s       in that process: new tokens (re-encoded from the texts) / seconds, median of
                 3 calls after one warm-up call (compiles), 4 samples x --new_tokens each;
                 RSS and tokens/s are medians over --rounds processes, schemes interleaved
  val ppl        exp(validation loss) over the run's config.train.eval_batches validation
                 batches of the stdlib corpus (fmjax.training.eval_loss, the pretrain stage's
                 metric), the model applied to its own (quantized) params
  zero-shot      python -m fmjax.evaluate --checkpoint=... --tasks=TASK --limit=200: acc
                 (default model: stdlib_next_line; HF model: arc_easy)
Every process runs with XLA's default flags on all local devices.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "def "


def sh(*args, timeout=3600) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout, env=dict(os.environ, PYTHONPATH=ROOT))
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout[-3000:]}"
                           f"{result.stderr[-3000:]}")
    return result.stdout


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
               for f in files)


# ---- measured in fresh child processes ----------------------------------------------------

def child_generate(checkpoint: str, new_tokens: int) -> dict:
    import resource
    import jax
    from fmjax.generation import loading, sampling
    engine, params, tokenizer, _ = loading.load_run(checkpoint)

    def run():
        start = time.perf_counter()
        texts = sampling.sample_texts(engine, params, tokenizer, PROMPT,
                                      max_new_tokens=new_tokens, temperature=0.8,
                                      num_samples=4, seed=0)
        seconds = time.perf_counter() - start
        made = sum(len(tokenizer.encode(t)) for t in texts) - 4 * len(tokenizer.encode(PROMPT))
        return made / seconds

    run()  # compiles
    rate = statistics.median(run() for _ in range(3))
    return {"tokens_per_s": rate,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "params_mb": sum(x.nbytes for x in jax.tree.leaves(params)) / 2**20}


def child_perplexity(checkpoint: str) -> dict:
    import dataclasses
    from fmjax import objectives
    from fmjax.data import pipeline
    from fmjax.generation import loading
    from fmjax.training import eval_loss, step as step_lib
    engine, params, tokenizer, _ = loading.load_run(checkpoint)
    config = engine.config
    config.objective = "causal_lm"
    objective = objectives.get(config)
    eval_step = step_lib.jit_eval_step(step_lib.make_eval_step(engine.model, objective),
                                       engine.shardings.params, engine.batch_sharding,
                                       engine.mesh)
    engine = dataclasses.replace(engine, objective=objective, eval_step=eval_step)
    rows = pipeline.process_rows(engine.batch_sharding, config.train.global_batch_size)
    batches = pipeline.make_eval_batches(config, tokenizer, rows=rows,
                                         row_length=engine.row_length())
    return eval_loss.evaluate(engine, params, batches)


def measure(checkpoint: str, task: str, limit: int) -> dict:
    """Bytes, validation perplexity and zero-shot accuracy of one checkpoint."""
    row = {"params_bytes": dir_bytes(os.path.join(checkpoint, "params")),
           "total_bytes": dir_bytes(checkpoint)}
    row.update(json.loads(sh(__file__, "--child=perplexity",
                             f"--checkpoint={checkpoint}").splitlines()[-1]))
    out = sh("-m", "fmjax.evaluate", f"--checkpoint={checkpoint}", f"--tasks={task}",
             f"--limit={limit}")
    match = re.search(rf"^{re.escape(task)}\s+0 acc\s+([0-9.]+)\s+([0-9.]+)\s+(\d+)", out, re.M)
    row.update({"task": task, "acc": float(match.group(1)), "acc_stderr": float(match.group(2)),
                "n": int(match.group(3))})
    return row


def measure_generation(by_scheme: dict[str, str], new_tokens: int, rounds: int) -> dict:
    """{scheme: tokens/s, peak RSS, params bytes in memory}, medians over `rounds` fresh
    processes per checkpoint, the schemes interleaved (a machine shared with other work slows
    them alike)."""
    runs = {scheme: [] for scheme in by_scheme}
    for _ in range(rounds):
        for scheme, path in by_scheme.items():
            runs[scheme].append(json.loads(sh(__file__, "--child=generate",
                                              f"--checkpoint={path}",
                                              f"--new_tokens={new_tokens}").splitlines()[-1]))
    return {scheme: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
            for scheme, rs in runs.items()}


# ---- the table ------------------------------------------------------------------------------

def prepare(args) -> dict[str, dict[str, str]]:
    """{model: {scheme: checkpoint}}"""
    work = args.workdir
    os.makedirs(work, exist_ok=True)
    run = args.run or os.path.join(work, "run")
    if not args.run and not os.path.isdir(os.path.join(run, "checkpoints")):
        print(f"training configs/default.py for {args.steps} steps in {run} ...", flush=True)
        sh("-m", "fmjax.train", "--config=configs/default.py", f"--workdir={run}",
           f"--config.train.steps={args.steps}", f"--config.train.eval_every={args.steps}",
           f"--config.train.checkpoint_every={args.steps}")
    hf_dir, hf_ckpt = os.path.join(work, "hf"), os.path.join(work, "hf_fp32")
    if not os.path.isdir(hf_ckpt):
        from fmjax.hf import tiny_models
        tiny_models.save_gpt2(hf_dir)
        sh("-m", "fmjax.convert", "import", "--family=gpt2", f"--hf_dir={hf_dir}",
           f"--output={hf_ckpt}")
    default_fp32 = os.path.join(work, "default_fp32")
    if not os.path.isdir(default_fp32):
        sh("-m", "fmjax.export", f"--workdir={run}", f"--output={default_fp32}")
    out = {}
    for model, fp32, group in (("default", default_fp32, 128), ("hf_gpt2", hf_ckpt, 32)):
        out[model] = {"fp32": fp32}
        for scheme in ("int8", "int4"):
            path = os.path.join(work, f"{model}_{scheme}")
            if not os.path.isdir(path):
                sh("-m", "fmjax.quantize", f"--checkpoint={fp32}", f"--scheme={scheme}",
                   f"--output={path}", *([f"--group_size={group}"] if scheme == "int4" else []))
            out[model][f"{scheme}" + (f" (g{group})" if scheme == "int4" else "")] = path
    return out


def table(results: dict) -> str:
    lines = ["| model | weights | params on disk (bytes) | vs fp32 | params in memory (MiB) "
             "| peak RSS generating (MiB) | tokens/s | val ppl | vs fp32 | zero-shot acc (n) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for model, rows in results.items():
        base = rows["fp32"]
        for scheme, r in rows.items():
            lines.append(
                f"| {model} | {scheme} | {r['params_bytes']:,} | "
                f"{r['params_bytes'] / base['params_bytes']:.3f} | {r['params_mb']:.2f} | "
                f"{r['peak_rss_mb']:.0f} | "
                f"{r['tokens_per_s']:.1f} | {r['eval_perplexity']:.3f} | "
                f"{100 * (r['eval_perplexity'] / base['eval_perplexity'] - 1):+.2f}% | "
                f"{r['task']} {r['acc']:.3f} ± {r['acc_stderr']:.3f} ({r['n']}) |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="", help="a finished run of configs/default.py")
    parser.add_argument("--steps", type=int, default=150, help="training steps if no --run")
    parser.add_argument("--workdir", default="/tmp/qtable", help="checkpoints and results")
    parser.add_argument("--new_tokens", type=int, default=64, help="tokens per sample")
    parser.add_argument("--limit", type=int, default=200, help="zero-shot examples per task")
    parser.add_argument("--rounds", type=int, default=3, help="generation processes per "
                        "checkpoint (interleaved; medians)")
    parser.add_argument("--reuse", action="store_true", help="keep the bytes, perplexity and "
                        "zero-shot figures of WORKDIR/results.json; measure generation again")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        from fmjax import cli
        cli.skip_absent_tpu()
        fn = {"generate": lambda: child_generate(args.checkpoint, args.new_tokens),
              "perplexity": lambda: child_perplexity(args.checkpoint)}[args.child]
        print(json.dumps(fn()))
        return
    print(f"settings: prompt {PROMPT!r}, 4 samples x {args.new_tokens} new tokens (median of 3 "
          f"after a warm-up), zero-shot --limit={args.limit}, {os.cpu_count()} CPUs", flush=True)
    checkpoints = prepare(args)
    saved = os.path.join(args.workdir, "results.json")
    results = {}
    if args.reuse and os.path.exists(saved):
        with open(saved) as f:
            results = json.load(f)
    for model, by_scheme in checkpoints.items():
        task = "stdlib_next_line" if model == "default" else "arc_easy"
        results.setdefault(model, {})
        for scheme, path in by_scheme.items():
            if "eval_perplexity" not in results[model].get(scheme, {}):
                results[model][scheme] = measure(path, task, args.limit)
        for scheme, row in measure_generation(by_scheme, args.new_tokens, args.rounds).items():
            results[model][scheme].update(row)
            print(f"{model} {scheme}: {json.dumps(results[model][scheme])}", flush=True)
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(table(results))


if __name__ == "__main__":
    main()
