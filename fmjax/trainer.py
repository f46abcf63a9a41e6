"""The pretraining loop: config -> mesh -> state (init or restore) -> steps with hooks for
logging, evaluation and checkpoints -> final report. `train(config, workdir)` is the library
entry point; `python -m fmjax.train` is a thin CLI over it."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil

import jax
import numpy as np

from fmjax import checkpoint, engine as engine_lib, flops, mesh as mesh_lib, sampling
from fmjax import config as config_lib
from fmjax.data import pipeline, tokenizer as tokenizer_lib
from fmjax.metrics import MetricsWriter, StepLogger


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

    def text(self) -> str:
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
            "=" * 72,
        ])


def evaluate(engine, params, eval_batches) -> dict:
    ce, w = 0.0, 0.0
    for local in eval_batches:
        sums = engine.run_eval_step(params, pipeline.global_batch(local, engine.batch_sharding))
        ce += float(sums["ce_sum"])
        w += float(sums["weight_sum"])
    loss = ce / max(w, 1.0)
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}


def check_resume_config(saved: dict, config) -> None:
    """Refuse to resume across changes of parameter shapes or data order unless allowed."""
    old = config_lib.from_json_dict(saved)
    changed = config_lib.diff(old, config, config_lib.SHAPE_KEYS + config_lib.DATA_ORDER_KEYS)
    if changed and not config.allow_config_change:
        raise config_lib.ConfigError(
            "the workdir's checkpoint was written with a different config: "
            + "; ".join(changed) + ". Use a new --workdir, or pass "
            "--config.allow_config_change=True if the change is safe.")


def batch_hash(local_batch: dict) -> str:
    h = hashlib.sha1()
    for k in sorted(local_batch):
        h.update(np.ascontiguousarray(local_batch[k]).tobytes())
    return h.hexdigest()[:16]


def train(config, workdir: str) -> Report:
    workdir = os.path.abspath(os.path.expanduser(workdir))
    is_main = jax.process_index() == 0
    config_lib.validate(config, num_devices=jax.device_count(),
                        num_processes=jax.process_count())
    os.makedirs(workdir, exist_ok=True)
    tokenizer = tokenizer_lib.ensure_tokenizer(config)
    tokenizer.check_against(config)

    mesh = mesh_lib.make_mesh(config)
    engine = engine_lib.build(config, mesh)
    train_iter = pipeline.make_train_iterator(config, tokenizer)
    eval_batches = pipeline.make_eval_batches(config, tokenizer)
    tr = config.train
    manager = checkpoint.make_manager(workdir, keep=tr.keep_checkpoints)
    latest = manager.latest_step()
    if latest is not None:
        state, saved = checkpoint.restore(manager, latest, engine.abstract_state,
                                          engine.shardings, train_iter)
        check_resume_config(saved, config)
        print(f"resumed from step {latest} in {checkpoint.checkpoint_dir(workdir)}", flush=True)
    else:
        state = engine.init_state()
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config_lib.to_json(config))
        if os.path.abspath(tokenizer.path) != checkpoint.tokenizer_path(workdir):
            shutil.copyfile(tokenizer.path, checkpoint.tokenizer_path(workdir))

    num_params = engine.num_params()
    fpt = engine.flops_per_token()
    peak, peak_desc = flops.total_peak()
    peak *= jax.process_count()
    tokens_per_step = tr.global_batch_size * engine.model_config.seq_len
    start = int(state.step)
    if is_main:
        print(f"model {engine.model_config.family}: {num_params:,} parameters; mesh "
              f"{dict(mesh.shape)}; {tokens_per_step:,} tokens/step; "
              f"{fpt / 1e6:.1f} MFLOPs/token; peak {peak_desc}", flush=True)

    writer = MetricsWriter(workdir, tr.steps, enabled=is_main)
    logger = StepLogger(writer, log_every=tr.log_every, total_steps=tr.steps, start_step=start,
                        tokens_per_step=tokens_per_step, flops_per_token=fpt, peak_flops=peak)
    ledger = open(os.path.join(workdir, "ledger.jsonl"), "a") if config.data.ledger else None

    def run_eval(step, params):
        metrics = evaluate(engine, params, eval_batches)
        writer.write(step, metrics)
        if is_main:
            print(f"step {step}/{tr.steps} eval_loss {metrics['eval_loss']:.4f} "
                  f"eval_perplexity {metrics['eval_perplexity']:.2f}", flush=True)
        return metrics

    eval_metrics = run_eval(0, state.params) if start == 0 and tr.eval_every else {}  # start of the curve
    for step in range(start + 1, tr.steps + 1):
        local = next(train_iter)
        if ledger is not None:
            ledger.write(json.dumps({"step": step, "process": jax.process_index(),
                                     "batch": batch_hash(local)}) + "\n")
        state, device_metrics = engine.run_train_step(
            state, pipeline.global_batch(local, engine.batch_sharding))
        logger.push(step, device_metrics)
        if (tr.eval_every and step % tr.eval_every == 0) or step == tr.steps:
            logger.flush()
            eval_metrics = run_eval(step, state.params)
            logger.restart_clock()
        if step % tr.checkpoint_every == 0 or step == tr.steps:
            checkpoint.save(manager, step, state, train_iter, config.to_dict(),
                            force=step == tr.steps)
    logger.flush()
    manager.wait_until_finished()
    manager.close()
    if ledger is not None:
        ledger.close()
    writer.close()
    if not eval_metrics:
        eval_metrics = evaluate(engine, state.params, eval_batches)

    sample = sampling.sample_texts(engine, state.params, tokenizer, tr.sample_prompt,
                                   max_new_tokens=tr.sample_tokens, temperature=0.8, top_k=40,
                                   seed=config.seed)[0] if is_main else ""
    tps = logger.median_tokens_per_sec()
    return Report(steps=int(state.step), train_loss=logger.last_loss,
                  eval_loss=eval_metrics["eval_loss"],
                  eval_perplexity=eval_metrics["eval_perplexity"], tokens_per_sec=tps,
                  mfu=logger.mfu(tps),
                  mfu_convention=f"6N + 12LdT FLOPs/token over {peak_desc}",
                  num_params=num_params, checkpoint_dir=checkpoint.checkpoint_dir(workdir),
                  metrics_path=os.path.join(workdir, "metrics.jsonl"), sample=sample)
