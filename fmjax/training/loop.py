"""The training loop shared by pretraining (fmjax.training.pretrain_stage) and fine-tuning
(fmjax.training.finetune_stage): restore or init -> steps -> hooks (`Plan.add_hook`: evaluation,
best-checkpoint keeping, a fork's own) -> log / checkpoint -> stop cleanly.

What it guarantees:
  * resume: the newest checkpoint that verifies is restored (state, data iterator), so the
    per-step losses of a killed-and-restarted run equal an uninterrupted run's bit for bit;
  * checkpoints every `train.checkpoint_every` steps and/or `train.checkpoint_every_minutes`
    (asynchronous), and always at the last step, committed before `run` returns;
  * preemption: SIGTERM/SIGINT stops after the current step (an evaluation in progress is
    abandoned), saves that step synchronously and returns with `preempted=True`;
  * a NaN/inf loss stops the run (`NonFiniteLoss`, naming the step and the last good checkpoint)
    before anything poisoned is saved, unless `train.on_nonfinite = "skip"`.
The train step itself stays a pure function of (state, batch); everything stateful is here.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from fmjax.training import checkpoint, peak_flops
from fmjax import config as config_lib
from fmjax.data import pipeline
from fmjax.training.metrics_log import MetricsWriter, StepLogger
from fmjax.training.preemption import StopRequest


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf and `train.on_nonfinite` is "stop"."""


class EvalAbandoned(Exception):
    """Raised inside an evaluation when a stop was requested."""


@dataclasses.dataclass
class HookContext:
    """What a hook sees besides (step, state)."""
    abandon: Callable[[], bool]  # True once a stop was requested: a long hook raises EvalAbandoned
    metrics: dict  # what the hooks before this one returned at this step
    stop_requested: bool = False  # set by stop_early()

    def stop_early(self) -> None:
        """Ends the run after this step (saved as usual), e.g. when a metric stopped improving."""
        self.stop_requested = True


@dataclasses.dataclass(frozen=True)
class Hook:
    """`fn(step, state, ctx) -> dict | None` run after the train step of every `every`-th step
    (0: none but the last), at the last step if `at_end`, and at step 0 of a fresh run (before
    any update) if `at_start`. What it returns goes to metrics.jsonl, TensorBoard and the log;
    hooks due at one step run in the order they were added. Steps are counted from the run's
    start, so a resumed run neither repeats nor skips a hook's step."""
    fn: Callable[[int, Any, HookContext], dict | None]
    every: int
    at_start: bool = False
    at_end: bool = True

    def due(self, step: int, last_step: int) -> bool:
        if step == 0:
            return self.at_start
        return bool(self.every and step % self.every == 0) or (self.at_end and step == last_step)


@dataclasses.dataclass
class Plan:
    """What a run trains and how it is measured; built by pretrain_stage.py or finetune_stage.py."""
    engine: Any  # fmjax.training.engine.Engine
    train_iter: Any  # checkpointable grain iterator of local batches
    init_state: Callable[[], Any]  # fresh state (called only when no checkpoint exists)
    tokenizer_bytes: bytes  # saved in every checkpoint
    flops_per_token: float
    tokens_per_step: int
    hooks: list[Hook] = dataclasses.field(default_factory=list)

    def add_hook(self, fn: Callable[[int, Any, HookContext], dict | None], *, every: int,
                 at_start: bool = False, at_end: bool = True) -> Hook:
        """Runs `fn` as a loop hook (see Hook): evaluation, best-checkpoint keeping, a fork's own."""
        hook = Hook(fn, every, at_start, at_end)
        self.hooks.append(hook)
        return hook


@dataclasses.dataclass
class Result:
    state: Any
    step: int
    start_step: int
    eval_metrics: dict
    logger: StepLogger
    peak_desc: str
    preempted: bool


def check_resume_config(saved: dict, config) -> None:
    """Shapes must match the checkpoint (always refused: the arrays could not restore); a
    different data order or optimizer setting is refused unless config.allow_config_change."""
    old = config_lib.from_json_dict(saved)
    shapes = config_lib.diff(old, config, config_lib.SHAPE_KEYS)
    if shapes:
        raise config_lib.ConfigError(
            "the workdir's checkpoint has different parameter shapes: " + "; ".join(shapes)
            + ". Use a new --workdir (to start a new shape from these weights, fine-tune with "
            "--config.init_from=WORKDIR).")
    optim_keys = tuple("optim." + k for k in config_lib.flat_keys(config.optim))
    changed = config_lib.diff(old, config, config_lib.DATA_ORDER_KEYS + optim_keys)
    if changed and not config.allow_config_change:
        raise config_lib.ConfigError(
            "the workdir's checkpoint was written with a different data order or optimizer: "
            + "; ".join(changed) + ". Pass --config.allow_config_change=True if the change "
            "is intended (e.g. a new learning rate), or use a new --workdir.")


def batch_hash(local_batch: dict) -> str:
    h = hashlib.sha1()
    for k in sorted(local_batch):
        h.update(np.ascontiguousarray(local_batch[k]).tobytes())
    return h.hexdigest()[:16]


class Ledger:
    """WORKDIR/ledger.jsonl: one line per step with the hash of the GLOBAL batch that went into
    it (with several processes every process joins a gather of the batch and process 0 alone
    writes), so the file is the same for any process count. On resume, lines after the
    restored step are dropped: those steps are redone, so the file lists each batch that went
    into the state exactly once."""

    def __init__(self, workdir: str, restored_step: int):
        self.path = os.path.join(workdir, "ledger.jsonl")
        self.file = None
        if jax.process_index() != 0:
            return
        kept = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                kept = [line for line in f if json.loads(line)["step"] <= restored_step]
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, self.path)
        self.file = open(self.path, "a")

    def write(self, step: int, local_batch: dict, global_batch: dict):
        """`local_batch`: this process's numpy rows; `global_batch`: the assembled jax.Arrays."""
        if jax.process_count() > 1:  # collective: every process takes part
            from jax.experimental import multihost_utils
            local_batch = multihost_utils.process_allgather(global_batch, tiled=True)
        if self.file is None:
            return
        self.file.write(json.dumps({"step": step, "batch": batch_hash(local_batch)}) + "\n")
        self.file.flush()

    def close(self):
        if self.file is not None:
            self.file.close()


class CheckpointClock:
    """When to save: every `checkpoint_every` steps and, if set, when `checkpoint_every_minutes`
    passed since the last save (process 0's clock decides, so all processes agree)."""

    def __init__(self, train_config):
        self.every, self.minutes = train_config.checkpoint_every, train_config.checkpoint_every_minutes
        self.last = time.monotonic()

    def due(self, step: int) -> bool:
        if self.every and step % self.every == 0:
            return True
        if self.minutes <= 0:
            return False
        late = time.monotonic() - self.last >= 60 * self.minutes
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            late = bool(multihost_utils.broadcast_one_to_all(np.int32(late)))
        return late

    def saved(self):
        self.last = time.monotonic()


def log_main(message: str):
    """Prints on process 0 only (every process runs the loop)."""
    if jax.process_index() == 0:
        print(message, flush=True)


def run(config, workdir: str, plan: Plan, log=log_main) -> Result:
    tr = config.train
    is_main = jax.process_index() == 0
    engine = plan.engine
    with StopRequest(tr.preemption_grace_seconds, log=log) as stop:
        manager = checkpoint.make_manager(workdir, keep=tr.keep_checkpoints,
                                          keep_period=tr.keep_period,
                                          async_save=tr.async_checkpoints)
        restored = checkpoint.restore_latest(manager, workdir, engine.abstract_state,
                                             engine.shardings, plan.train_iter, log=log)
        if restored is not None:
            step0, state, saved_config, saved_tokenizer = restored
            check_resume_config(saved_config, config)
            if saved_tokenizer != plan.tokenizer_bytes and not config.allow_config_change:
                raise config_lib.ConfigError(
                    f"config.tokenizer.path = {config.tokenizer.path!r}: this tokenizer differs "
                    "from the one saved with the checkpoint; resume with the run's own "
                    f"{checkpoint.tokenizer_path(workdir)} or use a new --workdir")
            log(f"resumed from step {step0} in {checkpoint.checkpoint_dir(workdir)}")
        else:
            step0, state = 0, plan.init_state()

        peak, peak_desc = peak_flops.total_peak()
        peak *= jax.process_count()
        writer = MetricsWriter(workdir, tr.steps, enabled=is_main)
        if restored is not None:
            writer.write(step0, {"event": "resumed"})  # later rows for a step supersede earlier
        logger = StepLogger(writer, log_every=tr.log_every, total_steps=tr.steps,
                            start_step=step0, tokens_per_step=plan.tokens_per_step,
                            flops_per_token=plan.flops_per_token, peak_flops=peak)
        ledger = Ledger(workdir, step0) if config.data.ledger else None
        clock = CheckpointClock(tr)
        config_dict = config.to_dict()
        last_saved = step0 if restored is not None else None

        def save(step, state):
            nonlocal last_saved
            checkpoint.save(manager, step, state, plan.train_iter, config_dict,
                            plan.tokenizer_bytes)
            clock.saved()
            last_saved = step

        def run_hooks(step, state, due):
            if is_main:
                log(f"step {step}/{tr.steps}: evaluating")
            ctx = HookContext(abandon=stop.should_stop, metrics={})
            for hook in due:
                try:
                    # collective with several processes: all abandon at the same eval batch
                    ctx.metrics.update(hook.fn(step, state, ctx) or {})
                except EvalAbandoned:
                    log(f"step {step}: evaluation abandoned ({stop.signal_name})")
                    return None
            if ctx.stop_requested:
                early_stop.append(step)
            if not ctx.metrics:
                return None
            writer.write(step, ctx.metrics)
            if is_main:
                log(f"step {step}/{tr.steps} " + " ".join(
                    f"{k} {v:.4f}" for k, v in ctx.metrics.items() if isinstance(v, float)))
            return ctx.metrics

        def due_hooks(step):
            return [hook for hook in plan.hooks if hook.due(step, tr.steps)]

        def check_finite(state):
            if logger.nonfinite_step is None or tr.on_nonfinite == "skip":
                return
            manager.wait_until_finished()
            good = manager.latest_step()
            where = (f"step {good} in {checkpoint.checkpoint_dir(workdir)}" if good is not None
                     else "none (no checkpoint was written)")
            raise NonFiniteLoss(
                f"loss is {logger.last_loss} at step {logger.nonfinite_step}; stopped before "
                f"saving anything after it. Last good checkpoint: {where}. Lower "
                "config.optim.learning_rate or raise warmup, or set "
                "--config.train.on_nonfinite=skip to drop such updates.")

        eval_metrics, early_stop = {}, []
        at_start = due_hooks(0) if step0 == 0 else []
        if at_start and not stop.should_stop():
            eval_metrics = run_hooks(0, state, at_start) or {}  # the start of the curve
        step = step0
        while step < tr.steps and not early_stop and not stop.should_stop():
            local = next(plan.train_iter)
            step += 1
            batch = pipeline.global_batch(local, engine.batch_sharding)
            if ledger is not None:
                ledger.write(step, local, batch)
            state, device_metrics = engine.run_train_step(state, batch)
            logger.push(step, device_metrics)
            check_finite(state)
            due = due_hooks(step)
            if due:
                logger.flush()
                check_finite(state)
                eval_metrics = run_hooks(step, state, due) or eval_metrics
                logger.restart_clock()
            if step == tr.steps or early_stop or clock.due(step):
                logger.flush()  # never save a state whose loss was not finite
                check_finite(state)
                save(step, state)
        logger.flush()
        check_finite(state)
        # stopped early by a signal on any process: the same on every process (should_stop)
        preempted = step < tr.steps and not early_stop
        if preempted or last_saved != step:
            manager.wait_until_finished()  # an async save in flight finishes first
            if last_saved != step:
                save(step, state)
            why = stop.signal_name or ("signal on another process" if preempted else "end")
            log(f"stopped at step {step} ({why}): checkpoint saved"
                + (f"; {stop.seconds_left():.0f} s of the grace period left"
                   if stop.deadline is not None else ""))
        manager.wait_until_finished()  # raises if an async save failed
        manager.close()
        if ledger is not None:
            ledger.close()
        writer.close()
    return Result(state=state, step=step, start_step=step0, eval_metrics=eval_metrics,
                  logger=logger, peak_desc=peak_desc, preempted=preempted)
