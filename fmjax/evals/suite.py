"""Runs evaluation tasks on a loaded model, each by its output type (KINDS): multiple choice and
rolling log-likelihood as packed log-likelihood requests on the model's own rows, generate_until
by batched greedy decoding; lm-evaluation-harness's metrics, and its results layout for JSON."""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Callable, Sequence

from fmjax import evals, models
from fmjax.config import ConfigError
from fmjax.evals import (generative, generative_decoding, loglikelihood, masked_lm,
                         multiple_choice, rolling)
from fmjax.objectives import mlm


def request_scorer(engine, tokenizer, batch_rows: int = 8):
    """score(params, requests, progress) -> [loglikelihood.Result] for the engine's model, with
    its program compiled once for every call:
      * a decoder: causal, or with the context as the bidirectional prefix when the checkpoint
        was trained with objective=prefix_lm;
      * an encoder-decoder (t5, t5_1_1): the context + eos in the encoder (as in generation),
        the answer as decoder targets;
      * an encoder (bert): masked-LM pseudo-log-likelihood with the [MASK] id the mlm
        objective uses (an imported BERT's own, else the last id).
    Rows are sharded over the engine's mesh batch axes."""
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
    scorer = loglikelihood.make_token_scorer(apply_logits, engine.model_config.vocab_size,
                                             engine.mesh)

    def score(params, requests, progress=None):
        if kind == "encoder":
            return masked_lm.pseudo_loglikelihoods(
                scorer, params, requests, row_length=row_length, batch_rows=batch_rows,
                mask_id=mlm.mask_id(engine.config), progress=progress)
        if kind == "encoder_decoder":
            requests = [loglikelihood.Request(r.context_ids + (tokenizer.eos_id,),
                                              r.continuation_ids) for r in requests]
        return loglikelihood.loglikelihoods(scorer, params, requests, row_length=row_length,
                                            batch_rows=batch_rows, progress=progress,
                                            encoder_decoder=kind == "encoder_decoder")
    return score


def _progress(name: str, unit: str = "rows"):
    start = time.monotonic()

    def show(done: int, total: int):
        elapsed = time.monotonic() - start
        eta = elapsed / done * (total - done) if done else 0.0
        sys.stderr.write(f"\r{name}: {done}/{total} {unit}, {elapsed:.0f} s, eta {eta:.0f} s")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return show


def prefix_ids(tokenizer) -> tuple[int, ...]:
    """Ids before every prompt: the tokenizer's own (fmjax's and Llama's bos; none for GPT-2),
    as lm-evaluation-harness's tokenizer call adds them."""
    return tuple(tokenizer.prefix_ids)


@dataclasses.dataclass
class _Run:
    """What one evaluate() call scores with; `generate` is built on the first generative task."""
    engine: object
    params: object
    tokenizer: object
    score: Callable
    num_fewshot: int
    seed: int
    batch_rows: int
    progress: Callable[..., Callable | None]  # (task name, unit) -> progress(done, total)
    generate: Callable | None = None


def _multiple_choice(task, examples, run: _Run):
    contexts = multiple_choice.fewshot_contexts(task, examples, run.num_fewshot, run.seed)
    requests = multiple_choice.requests(task, contexts, examples, run.tokenizer.encode,
                                        prefix_ids(run.tokenizer))
    return multiple_choice.score(examples, run.score(run.params, requests,
                                                     run.progress(task.name)))


def _rolling(task, passages, run: _Run):
    """No few-shot (the harness ignores it for rolling tasks). The prefix token is bos, else
    eos, as the harness's; an encoder-decoder's windows are one token shorter so that a
    window's context + eos always fits its encoder."""
    tokenizer, cfg = run.tokenizer, run.engine.model_config
    prefix = tokenizer.bos_id if tokenizer.bos_id >= 0 else tokenizer.eos_id
    length = cfg.seq_len - (models.get_family(cfg.family).kind == "encoder_decoder")
    requests, owner = rolling.requests(passages, tokenizer.encode, prefix, length)
    return rolling.score(passages, run.score(run.params, requests, run.progress(task.name)),
                         owner)


def _generate_until(task, questions, run: _Run):
    if run.generate is None:
        run.generate = generative_decoding.text_generator(
            run.engine, run.tokenizer, run.batch_rows, prefix_ids(run.tokenizer))
    prompts = multiple_choice.fewshot_contexts(task, questions, run.num_fewshot, run.seed)
    texts, truncated = run.generate(run.params, prompts, task.generation,
                                    run.progress(task.name, "prompts"))
    return generative.score(questions, texts, task.generation, truncated)


@dataclasses.dataclass(frozen=True)
class Kind:
    run: Callable  # (task, its examples, _Run) -> Scores with .metrics(), .n, .truncated
    model_kinds: tuple[str, ...]  # the model family kinds that can report it
    fewshot: bool  # few-shot examples go before each prompt


# a Task's output_type -> how it is scored; a new output type is an entry here
KINDS = {
    "multiple_choice": Kind(_multiple_choice, ("decoder", "encoder_decoder", "encoder"), True),
    "loglikelihood_rolling": Kind(_rolling, ("decoder", "encoder_decoder"), False),
    "generate_until": Kind(_generate_until, tuple(generative_decoding.GENERATORS), True),
}


def check_supported(engine, task) -> None:
    """A ConfigError naming the task and the family when the model cannot report the task."""
    family = engine.model_config.family
    kind = models.get_family(family).kind
    allowed = KINDS[task.output_type].model_kinds
    if kind not in allowed:
        raise ConfigError(
            f"eval task {task.name!r} is {task.output_type}, which model.family = {family!r} "
            f"({kind}) cannot report: it needs a model of kind {' or '.join(allowed)}; score "
            f"this model on multiple_choice tasks (acc, acc_norm) only")


def evaluate(engine, params, tokenizer, task_names: Sequence[str], *, num_fewshot: int = 0,
             limit: int = 0, seed: int = 1234, batch_rows: int = 8, progress: bool = True,
             score=None) -> dict:
    """{task name: Scores of its kind} of each task's first `limit` examples (0 = all);
    `score` from request_scorer (built here when not given). Every task is checked against
    the model before any is scored."""
    tasks = [evals.get(name) for name in task_names]
    for task in tasks:
        check_supported(engine, task)
    run = _Run(engine, params, tokenizer, score or request_scorer(engine, tokenizer, batch_rows),
               num_fewshot, seed, batch_rows, _progress if progress else lambda name, unit="": None)
    out = {}
    for name, task in zip(task_names, tasks):
        examples = task.load(task.eval_split)
        examples = examples[:limit] if limit else examples
        out[name] = KINDS[task.output_type].run(task, examples, run)
    return out


def _shots(name: str, num_fewshot: int) -> int:
    return num_fewshot if KINDS[evals.get(name).output_type].fewshot else 0


def loop_hook(engine, tokenizer, eval_config):
    """A training-loop hook (fmjax/training/loop.py) that scores config.eval.tasks and returns
    '{task}/{metric}' for each task's metrics (acc and acc_norm; word_perplexity,
    byte_perplexity and bits_per_byte; exact_match) for metrics.jsonl and TensorBoard."""
    names = [n.strip() for n in eval_config.tasks.split(",") if n.strip()]
    for name in names:  # an unknown name, or one the model cannot run, fails before training
        check_supported(engine, evals.get(name))
    score = request_scorer(engine, tokenizer)  # compiled once, for every evaluation

    def hook(step, state, ctx):
        scores = evaluate(engine, state.params, tokenizer, names,
                          num_fewshot=eval_config.num_fewshot, limit=eval_config.limit,
                          progress=False, score=score)
        return {f"{name}/{metric}": value for name, s in scores.items()
                for metric, (value, _) in s.metrics().items()}
    return hook


def results_json(scores: dict, *, num_fewshot: int, model: str, limit: int) -> dict:
    """lm-evaluation-harness's results layout ("results" with "metric,filter" keys,
    "n-samples", "configs" with each task's output_type), so tools that read the harness's
    files read fmjax's. A metric without a standard error (the perplexities) reports "N/A",
    as the harness does."""
    results = {}
    for name, s in scores.items():
        row = {"alias": name}
        for metric, (value, se) in s.metrics().items():
            row[f"{metric},none"] = value
            row[f"{metric}_stderr,none"] = "N/A" if se is None else se
        results[name] = row
    configs = {}
    for name, s in scores.items():
        task = evals.get(name)
        configs[name] = {"task": name, "num_fewshot": _shots(name, num_fewshot),
                         "output_type": task.output_type,
                         "metric_list": [{"metric": m} for m in s.metrics()]}
        if task.output_type == "generate_until":
            configs[name]["generation_kwargs"] = {
                "until": list(task.generation.until), "max_gen_toks":
                task.generation.max_gen_toks, "do_sample": False, "temperature": 0.0}
    return {
        "results": results,
        "n-samples": {name: {"original": s.n, "effective": s.n} for name, s in scores.items()},
        "configs": configs,
        "n-shot": {name: _shots(name, num_fewshot) for name in scores},
        "config": {"model": "fmjax", "model_args": model, "limit": limit or None},
        "fmjax": {name: {"truncated_requests": s.truncated} for name, s in scores.items()},
    }


def table(scores: dict, num_fewshot: int) -> str:
    lines = [f"{'task':<28} {'shots':>5} {'metric':<16} {'value':>9} {'stderr':>7} {'n':>6}"]
    for name, s in scores.items():
        for metric, (value, se) in s.metrics().items():
            stderr = "N/A" if se is None else f"{se:.4f}"
            shown = f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"  # perplexities
            lines.append(f"{name[-28:]:<28} {_shots(name, num_fewshot):>5} {metric:<16} "
                         f"{shown:>9} {stderr:>7} {s.n:>6}")
        if s.truncated:
            lines.append(f"  ({s.truncated} requests truncated from the left to the model's "
                         "length)")
    return "\n".join(lines)
