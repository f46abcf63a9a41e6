"""Pretraining: config -> tokenizer -> mesh -> engine -> data -> the shared loop (fmjax.training.loop:
resume, checkpoints, preemption) -> final report. `train(config, workdir)` is the library
entry point; `python -m fmjax.train` is a thin CLI over it."""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax

from fmjax import config as config_lib, distributed, mesh as mesh_lib, models
from fmjax.data import identity, pipeline, sources, tokenizer_files
from fmjax.generation import sampling
from fmjax.quantization import qat
from fmjax.training import checkpoint, engine as engine_lib, eval_loss, loop
from fmjax.training import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class TaskAccuracy:
    """One eval task's accuracy (lm-evaluation-harness's acc) at the end of the run."""
    name: str
    acc_by_shots: dict[int, float]  # {shots: acc}: the in-loop evaluation's and the final one's
    chance: float  # expected acc of a uniform guess: mean over examples of 1 / choices
    n: int  # examples scored

    def line(self) -> str:
        shots = "  ".join(f"{k}-shot {acc:.2f}" for k, acc in sorted(self.acc_by_shots.items()))
        return f"  {self.name} acc  {shots}  (chance {self.chance:.2f}, n={self.n})"


@dataclasses.dataclass
class Report:
    steps: int
    train_loss: float
    eval_loss: float
    eval_perplexity: float
    tokens_per_sec: float
    mfu: float
    mfu_convention: str
    num_params: int
    checkpoint_dir: str
    metrics_path: str
    sample: str
    preempted: bool = False
    task_accuracy: Sequence[TaskAccuracy] = ()  # config.eval.tasks, when scored at the end

    def text(self) -> str:
        if self.preempted:
            return (f"fmjax run preempted at step {self.steps}: checkpoint saved in "
                    f"{self.checkpoint_dir}; run the same command again to resume.")
        return "\n".join([
            "=" * 72,
            f"fmjax run finished: {self.steps} steps, {self.num_params:,} parameters",
            f"  train loss        {self.train_loss:.4f}",
            f"  validation loss   {self.eval_loss:.4f}  (perplexity {self.eval_perplexity:.2f})",
            f"  throughput        {self.tokens_per_sec:,.0f} tokens/s",
            f"  MFU               {100 * self.mfu:.1f}%  ({self.mfu_convention})",
            f"  checkpoints       {self.checkpoint_dir}",
            f"  metrics           {self.metrics_path} (+ tensorboard/)",
            "  sample:",
            "    " + self.sample.replace("\n", "\n    "),
            *(task.line() for task in self.task_accuracy),
            "=" * 72,
        ])


def eval_task_names(eval_config) -> list[str]:
    return [name.strip() for name in eval_config.tasks.split(",") if name.strip()]


def final_fewshot_hook(engine, tokenizer, eval_config):
    """suite.loop_hook at eval.final_num_fewshot = K shots, its metrics renamed
    '{task}/{K}shot/acc' (and acc_norm) so they sit beside the in-loop '{task}/acc'."""
    from fmjax.evals import suite
    shots = eval_config.final_num_fewshot
    fewshot_config = eval_config.copy_and_resolve_references()
    fewshot_config.num_fewshot = shots
    score = suite.loop_hook(engine, tokenizer, fewshot_config)

    def hook(step, state, ctx):
        return {f"{key.rsplit('/', 1)[0]}/{shots}shot/{key.rsplit('/', 1)[1]}": value
                for key, value in score(step, state, ctx).items()}
    return hook


def add_eval_task_hooks(plan: loop.Plan, engine, tokenizer, eval_config) -> None:
    """config.eval.tasks in the loop every eval.every steps and after the last, at
    eval.num_fewshot shots; with eval.final_num_fewshot = K, once more after the last step at
    K shots."""
    if not eval_task_names(eval_config):
        return
    from fmjax.evals import suite
    plan.add_hook(suite.loop_hook(engine, tokenizer, eval_config), every=eval_config.every)
    if eval_config.final_num_fewshot:
        plan.add_hook(final_fewshot_hook(engine, tokenizer, eval_config), every=0)


def task_accuracy(eval_config, metrics: dict) -> list[TaskAccuracy]:
    """The accuracies of eval.tasks in the last evaluation's `metrics` (none if not scored)."""
    from fmjax import evals
    out = []
    for name in eval_task_names(eval_config):
        by_shots = {eval_config.num_fewshot: metrics.get(f"{name}/acc"),
                    eval_config.final_num_fewshot: metrics.get(
                        f"{name}/{eval_config.final_num_fewshot}shot/acc")}
        by_shots = {k: v for k, v in by_shots.items() if v is not None}
        if not by_shots:
            continue
        task = evals.get(name)
        examples = task.load(task.eval_split)
        examples = examples[:eval_config.limit] if eval_config.limit else examples
        chance = sum(1 / len(ex.choices) for ex in examples) / len(examples)
        out.append(TaskAccuracy(name, by_shots, chance, len(examples)))
    return out


def train(config, workdir: str, hooks: Sequence[loop.Hook] = ()) -> Report:
    """Pretrains `config` in `workdir` (resuming from its checkpoints); `hooks` run after the
    evaluation hook at their own steps (a fork's: see loop.Hook)."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    config_lib.validate(config, num_devices=jax.device_count(),
                        num_processes=jax.process_count())
    models.resolve(config.model)  # the model's own checks (layers, attention), before any data
    qat.refuse_in_pretraining(config)
    # process 0 builds the shared tokenizer / TFDS cache first; then all compare what they read
    tokenizer, data_identity = distributed.process_zero_first(lambda: (
        tokenizer_files.ensure_tokenizer(config),
        identity.data_identity(config, sources.get_source)))
    tokenizer.check_against(config)
    tokenizer_bytes = workdir_lib.prepare_workdir(config, workdir, tokenizer)
    distributed.check_agreement({"config": config_lib.to_json(config),
                                 "tokenizer": tokenizer_bytes, "data split": data_identity})

    mesh = mesh_lib.make_mesh(config)
    engine = engine_lib.build(config, mesh)
    # this process's rows of each global batch: those its devices hold (any process count)
    rows = pipeline.process_rows(engine.batch_sharding, config.train.global_batch_size)
    eval_batches = pipeline.make_eval_batches(config, tokenizer, rows=rows,
                                              row_length=engine.row_length())
    tr = config.train
    num_params = engine.num_params()
    plan = loop.Plan(
        engine=engine, train_iter=pipeline.make_train_iterator(
            config, tokenizer, rows=rows, row_length=engine.row_length()),
        init_state=engine.init_state,
        tokenizer_bytes=tokenizer_bytes, flops_per_token=engine.flops_per_token(),
        tokens_per_step=engine.tokens_per_step())
    plan.add_hook(lambda step, state, ctx: eval_loss.evaluate(engine, state.params, eval_batches,
                                                              ctx.abandon),
                  every=tr.eval_every, at_start=tr.eval_every > 0)
    add_eval_task_hooks(plan, engine, tokenizer, config.eval)
    plan.hooks.extend(hooks)
    if jax.process_index() == 0:
        print(f"model {engine.model_config.family}: {num_params:,} parameters; mesh "
              f"{dict(mesh.shape)}; {plan.tokens_per_step:,} tokens/step; "
              f"{plan.flops_per_token / 1e6:.1f} MFLOPs/token", flush=True)
    result = loop.run(config, workdir, plan)
    state = result.state
    eval_metrics = result.eval_metrics
    if not eval_metrics and not result.preempted:
        eval_metrics = eval_loss.evaluate(engine, state.params, eval_batches)
    family = models.get_family(engine.model_config.family)
    flop_count = ("6N + 12LdT FLOPs/token" if family.row_flops is None
                  else "6N + 12LdT FLOPs per stack over its own tokens")
    sample = ""
    if family.kind not in sampling.TEXT_SAMPLERS:
        sample = (f"(none: {engine.model_config.family} is an {family.kind} model; it does not "
                  "generate)")
    elif not result.preempted:
        params = state.params
        if jax.process_count() > 1:  # a host copy on every process (collective); sample on 0
            from jax.experimental import multihost_utils
            params = multihost_utils.process_allgather(params, tiled=True)
        if jax.process_index() == 0:
            sample = sampling.sample_texts(engine, params, tokenizer, tr.sample_prompt,
                                           max_new_tokens=tr.sample_tokens, temperature=0.8,
                                           top_k=40, seed=config.seed)[0]
    logger = result.logger
    tps = logger.median_tokens_per_sec()
    return Report(steps=result.step, train_loss=logger.last_loss,
                  eval_loss=eval_metrics.get("eval_loss", float("nan")),
                  eval_perplexity=eval_metrics.get("eval_perplexity", float("nan")),
                  tokens_per_sec=tps, mfu=logger.mfu(tps),
                  mfu_convention=f"{flop_count} over {result.peak_desc}",
                  num_params=num_params, checkpoint_dir=checkpoint.checkpoint_dir(workdir),
                  metrics_path=os.path.join(workdir, "metrics.jsonl"), sample=sample,
                  preempted=result.preempted,
                  task_accuracy=task_accuracy(config.eval, result.eval_metrics))
