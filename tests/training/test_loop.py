"""The shared loop in-process, with signals raised at exact moments: during the first compile,
in the middle of an evaluation, while an async save is in flight; and a NaN loss."""
import json
import os
import signal

import pytest

from fmjax.training import checkpoint, engine as engine_lib, loop, pretrain_stage as trainer


def tiny(data_dir, **train):
    from tests.helpers import tiny_config
    c = tiny_config()
    c.model.vocab_size = 512
    c.model.seq_len = 64
    c.tokenizer.train_chars = 1_000_000
    c.data.tfds_data_dir = data_dir
    c.mesh.data = -1
    c.train.update(dict(steps=12, log_every=1, eval_every=6, eval_batches=4, checkpoint_every=6,
                        sample_tokens=4), **train)
    return c


def latest(workdir):
    return checkpoint.make_manager(workdir, read_only=True).latest_step()


def sigterm():
    os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_signal_during_first_compile_saves_the_finished_step(tmp_path, data_dir, monkeypatch):
    original = engine_lib.Engine.run_train_step
    calls = []

    def first_call_signals(self, state, batch):
        if not calls:
            sigterm()  # arrives before the first step is compiled
        calls.append(1)
        return original(self, state, batch)

    monkeypatch.setattr(engine_lib.Engine, "run_train_step", first_call_signals)
    report = trainer.train(tiny(data_dir), str(tmp_path))
    assert report.preempted and report.steps == 1 and latest(str(tmp_path)) == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


@pytest.mark.slow
def test_signal_mid_eval_abandons_it_and_saves(tmp_path, data_dir, monkeypatch):
    original = engine_lib.Engine.run_eval_step
    calls = []

    def signal_on_second_batch_of_step_6(self, params, batch):
        calls.append(1)
        if len(calls) == 4 + 2:  # step 0's eval has 4 batches; then step 6's second batch
            sigterm()
        return original(self, params, batch)

    monkeypatch.setattr(engine_lib.Engine, "run_eval_step", signal_on_second_batch_of_step_6)
    report = trainer.train(tiny(data_dir), str(tmp_path))
    assert report.preempted and report.steps == 6 and latest(str(tmp_path)) == 6
    assert len(calls) == 6  # the eval stopped after the batch in flight
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows if "eval_loss" in r] == [0]  # no half-eval written
    resumed = trainer.train(tiny(data_dir), str(tmp_path))
    assert resumed.steps == 12 and not resumed.preempted


def test_signal_during_async_save_waits_for_it_and_saves_the_last_step(tmp_path, data_dir,
                                                                       monkeypatch):
    original = checkpoint.save

    def save_then_signal(manager, step, *args, **kwargs):
        out = original(manager, step, *args, **kwargs)
        if step == 6:
            sigterm()  # the async save of step 6 is still being written
        return out

    monkeypatch.setattr(checkpoint, "save", save_then_signal)
    report = trainer.train(tiny(data_dir), str(tmp_path))
    assert report.preempted and report.steps == 6
    assert checkpoint.make_manager(str(tmp_path), read_only=True).all_steps() == [6]


def test_nonfinite_loss_stops_naming_the_step_and_last_good_checkpoint(tmp_path, data_dir,
                                                                        monkeypatch):
    original = engine_lib.Engine.run_train_step

    def nan_at_step_9(self, state, batch):
        step = int(state.step)  # read before the step donates the state
        new_state, metrics = original(self, state, batch)
        if step == 8:  # the update that makes step 9
            metrics = {**metrics, "loss": metrics["loss"] * float("nan")}
        return new_state, metrics

    monkeypatch.setattr(engine_lib.Engine, "run_train_step", nan_at_step_9)
    with pytest.raises(loop.NonFiniteLoss, match=r"loss is nan at step 9.*Last good checkpoint: "
                                                 r"step 6.*on_nonfinite=skip"):
        trainer.train(tiny(data_dir), str(tmp_path))
    assert latest(str(tmp_path)) == 6  # nothing after the bad step was saved


def test_checkpoint_clock_saves_on_steps_and_on_minutes(monkeypatch):
    import ml_collections
    now = [1000.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: now[0])
    clock = loop.CheckpointClock(ml_collections.ConfigDict(
        dict(checkpoint_every=100, checkpoint_every_minutes=2.0)))
    assert clock.due(100) and not clock.due(7)
    now[0] += 119.0
    assert not clock.due(8)  # 1m59s since the start
    now[0] += 1.0
    assert clock.due(9)  # 2 minutes: a save is due although 9 is no multiple of 100
    clock.saved()
    now[0] += 60.0
    assert not clock.due(10)  # the clock restarts at each save
    off = loop.CheckpointClock(ml_collections.ConfigDict(
        dict(checkpoint_every=0, checkpoint_every_minutes=0.0)))
    now[0] += 1e6
    assert not off.due(5)


def test_grace_period_is_enforced_after_a_signal():
    import time
    from fmjax.training import preemption
    exits, lines = [], []
    with preemption.StopRequest(0.2, log=lines.append, on_deadline=exits.append) as stop:
        sigterm()
        assert stop.requested and stop.seconds_left() <= 0.2
        time.sleep(0.6)  # a save that hangs past the deadline
    assert exits == [preemption.EXIT_GRACE_EXCEEDED]
    assert "grace period of 0.2 s after SIGTERM ran out" in lines[-1]
    exits.clear()
    with preemption.StopRequest(0.3, log=lines.append, on_deadline=exits.append):
        sigterm()  # the run stops in time: leaving the block cancels the deadline
    time.sleep(0.5)
    assert exits == []


@pytest.mark.slow
def test_a_forks_hook_runs_at_its_steps_and_a_resume_neither_repeats_nor_skips_one(
        tmp_path, data_dir, monkeypatch):
    """A hook added by a fork (Plan.add_hook / the stages' `hooks`) runs every 4 steps and at
    the end; its metrics reach metrics.jsonl; killed at step 6 and resumed, the run calls it at
    exactly the steps an uninterrupted run does; ctx.stop_early() ends the run after its step."""
    seen = []

    def count_params(step, state, ctx):
        seen.append(step)
        assert "eval_loss" in ctx.metrics or step % 6  # the evaluation hook ran first
        return {"hook_step": float(step)}

    hook = loop.Hook(count_params, every=4)
    assert [s for s in range(13) if hook.due(s, 12)] == [4, 8, 12]
    original = checkpoint.save

    def save_then_signal(manager, step, *args, **kwargs):
        out = original(manager, step, *args, **kwargs)
        if step == 6 and not os.environ.get("RESUMED"):
            sigterm()
        return out

    monkeypatch.setattr(checkpoint, "save", save_then_signal)
    first = trainer.train(tiny(data_dir), str(tmp_path), hooks=[hook])
    assert first.preempted and first.steps == 6 and seen == [4]
    monkeypatch.setenv("RESUMED", "1")
    trainer.train(tiny(data_dir), str(tmp_path), hooks=[hook])
    assert seen == [4, 8, 12]
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows if "hook_step" in r] == [4, 8, 12]

    def stop_at_8(step, state, ctx):
        if step == 8:
            ctx.stop_early()

    report = trainer.train(tiny(data_dir), str(tmp_path / "early"),
                           hooks=[loop.Hook(stop_at_8, every=4)])
    assert report.steps == 8 and latest(str(tmp_path / "early")) == 8
