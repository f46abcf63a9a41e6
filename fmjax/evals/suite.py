"""Runs evaluation tasks on a loaded model: examples -> requests -> packed log-likelihoods on
the model's own rows -> lm-evaluation-harness's metrics, and its results layout for JSON."""
from __future__ import annotations

import sys
import time
from typing import Sequence

from fmjax import evals, models
from fmjax.evals import loglikelihood, masked_lm, multiple_choice


def request_scorer(engine, tokenizer, batch_rows: int = 8):
    """score(params, requests, progress) -> [loglikelihood.Result] for the engine's model, with
    its program compiled once for every call:
      * a decoder: causal, or with the context as the bidirectional prefix when the checkpoint
        was trained with objective=prefix_lm;
      * an encoder-decoder (t5, t5_1_1): the context + eos in the encoder (as in generation),
        the answer as decoder targets;
      * an encoder (bert): masked-LM pseudo-log-likelihood, [MASK] = the last id as fmjax's
        mlm objective trains it."""
    kind = models.get_family(engine.model_config.family).kind
    model, row_length = engine.model, engine.model_config.seq_len
    prefix_lm = engine.config.objective == "prefix_lm"
    if kind == "encoder_decoder":
        def apply_logits(params, rows):
            return model.apply({"params": params}, rows["encoder_tokens"], rows["tokens"],
                               rows["encoder_segment_ids"], rows["segment_ids"],
                               rows["encoder_positions"], rows["positions"])
    else:
        def apply_logits(params, rows):
            prefix = {"prefix_mask_BT": rows["prefix"]} if prefix_lm else {}
            return model.apply({"params": params}, rows["tokens"], rows["segment_ids"],
                               rows["positions"], **prefix)
    scorer = loglikelihood.make_token_scorer(apply_logits, engine.model_config.vocab_size)

    def score(params, requests, progress=None):
        if kind == "encoder":
            return masked_lm.pseudo_loglikelihoods(
                scorer, params, requests, row_length=row_length, batch_rows=batch_rows,
                mask_id=engine.model_config.vocab_size - 1, progress=progress)
        if kind == "encoder_decoder":
            requests = [loglikelihood.Request(r.context_ids + (tokenizer.eos_id,),
                                              r.continuation_ids) for r in requests]
        return loglikelihood.loglikelihoods(scorer, params, requests, row_length=row_length,
                                            batch_rows=batch_rows, progress=progress,
                                            encoder_decoder=kind == "encoder_decoder")
    return score


def _progress(name: str):
    start = time.monotonic()

    def show(done: int, total: int):
        elapsed = time.monotonic() - start
        eta = elapsed / done * (total - done) if done else 0.0
        sys.stderr.write(f"\r{name}: {done}/{total} rows, {elapsed:.0f} s, eta {eta:.0f} s")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return show


def evaluate(engine, params, tokenizer, task_names: Sequence[str], *, num_fewshot: int = 0,
             limit: int = 0, seed: int = 1234, batch_rows: int = 8, progress: bool = True,
             score=None) -> dict[str, multiple_choice.Scores]:
    """{task name: Scores} of each task's first `limit` examples (0 = all); `score` from
    request_scorer (built here when not given)."""
    score = score or request_scorer(engine, tokenizer, batch_rows)
    prefix = (tokenizer.bos_id,) if tokenizer.bos_id >= 0 else ()
    out = {}
    for name in task_names:
        task = evals.get(name)
        examples = task.load(task.eval_split)
        examples = examples[:limit] if limit else examples
        contexts = multiple_choice.fewshot_contexts(task, examples, num_fewshot, seed)
        requests = multiple_choice.requests(task, contexts, examples, tokenizer.encode, prefix)
        results = score(params, requests, _progress(name) if progress else None)
        out[name] = multiple_choice.score(examples, results)
    return out


def loop_hook(engine, tokenizer, eval_config):
    """A training-loop hook (fmjax/training/loop.py) that scores config.eval.tasks and returns
    '{task}/acc' and '{task}/acc_norm' for metrics.jsonl and TensorBoard."""
    names = [n.strip() for n in eval_config.tasks.split(",") if n.strip()]
    for name in names:
        evals.get(name)  # an unknown name fails before training starts
    score = request_scorer(engine, tokenizer)  # compiled once, for every evaluation

    def hook(step, state, ctx):
        scores = evaluate(engine, state.params, tokenizer, names,
                          num_fewshot=eval_config.num_fewshot, limit=eval_config.limit,
                          progress=False, score=score)
        return {f"{name}/{metric}": getattr(s, metric) for name, s in scores.items()
                for metric in ("acc", "acc_norm")}
    return hook


def results_json(scores: dict[str, multiple_choice.Scores], *, num_fewshot: int, model: str,
                 limit: int) -> dict:
    """lm-evaluation-harness's results layout ("results" with "metric,filter" keys,
    "n-samples", "configs"), so tools that read the harness's files read fmjax's."""
    return {
        "results": {name: {"alias": name, "acc,none": s.acc, "acc_stderr,none": s.acc_stderr,
                           "acc_norm,none": s.acc_norm, "acc_norm_stderr,none": s.acc_norm_stderr}
                    for name, s in scores.items()},
        "n-samples": {name: {"original": s.n, "effective": s.n} for name, s in scores.items()},
        "configs": {name: {"task": name, "num_fewshot": num_fewshot, "output_type":
                           "multiple_choice", "metric_list": [{"metric": "acc"},
                                                              {"metric": "acc_norm"}]}
                    for name in scores},
        "n-shot": {name: num_fewshot for name in scores},
        "config": {"model": "fmjax", "model_args": model, "limit": limit or None},
        "fmjax": {name: {"truncated_requests": s.truncated} for name, s in scores.items()},
    }


def table(scores: dict[str, multiple_choice.Scores], num_fewshot: int) -> str:
    lines = [f"{'task':<28} {'shots':>5} {'metric':<9} {'value':>7} {'stderr':>7} {'n':>6}"]
    for name, s in scores.items():
        for metric, value, se in (("acc", s.acc, s.acc_stderr),
                                  ("acc_norm", s.acc_norm, s.acc_norm_stderr)):
            lines.append(f"{name[-28:]:<28} {num_fewshot:>5} {metric:<9} {value:>7.4f} "
                         f"{se:>7.4f} {s.n:>6}")
        if s.truncated:
            lines.append(f"  ({s.truncated} requests truncated from the left to the model's "
                         "length)")
    return "\n".join(lines)
