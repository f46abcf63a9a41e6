"""Kill a real `python -m fmjax.train` at chosen steps (SIGTERM, and separately kill -9), restart
it in the same workdir each time, and compare with an uninterrupted run: per-step loss,
grad_norm and learning_rate equal bit for bit, and the batch ledger lists every step's batch
exactly once, the same batches in the same order."""
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from fmjax.training import checkpoint
from tests.e2e.test_train_cli import ROOT, TINY, cli
from tests.helpers import cpu_env

STEPS = 30
RUN = [*TINY, f"--config.train.steps={STEPS}", "--config.train.log_every=1",
       "--config.train.eval_every=10", "--config.train.checkpoint_every=6",
       "--config.data.ledger=True", "--config.train.sample_tokens=4"]


def run_until(args, step, sig, timeout=300):
    """Starts the CLI, sends `sig` when it prints the progress line of `step`, waits for it."""
    env = cpu_env(2)
    proc = subprocess.Popen([sys.executable, "-m", "fmjax.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(f"step {step}/{STEPS} loss"):
            proc.send_signal(sig)
            break
    rest, _ = proc.communicate(timeout=timeout)
    return proc.returncode, "".join(lines) + rest


def per_step(workdir):
    """{step: (loss, grad_norm, learning_rate)}; a later row for a step supersedes an earlier."""
    rows = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r:
                rows[r["step"]] = (r["loss"], r["grad_norm"], r["learning_rate"])
    return rows


def ledger(workdir):
    with open(os.path.join(workdir, "ledger.jsonl")) as f:
        return [(r["step"], r["batch"]) for r in map(json.loads, f)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    cli("fmjax.train", *RUN, f"--workdir={workdir}", f"--config.data.tfds_data_dir={data_dir}")
    return per_step(workdir), ledger(workdir)


@pytest.mark.parametrize("sig,kill_steps", [(signal.SIGTERM, (4, 13, 22)),
                                            (signal.SIGKILL, (9, 15, 27))])
def test_killed_three_times_equals_uninterrupted(reference, tmp_path, data_dir, sig, kill_steps):
    args = [*RUN, f"--workdir={tmp_path}", f"--config.data.tfds_data_dir={data_dir}"]
    for step in kill_steps:
        code, out = run_until(args, step, sig)
        if sig == signal.SIGTERM:
            assert code == 0, out[-3000:]
            assert "SIGTERM received" in out and "checkpoint saved" in out and "preempted" in out
            # it finished the step in flight and saved exactly that step
            stopped = int(re.search(r"stopped at step (\d+) \(SIGTERM\)", out).group(1))
            assert step < stopped < STEPS
            assert checkpoint.make_manager(str(tmp_path), read_only=True).latest_step() == stopped
        else:
            assert code == -signal.SIGKILL
    out = cli("fmjax.train", *args)
    assert "resumed from step" in out and "validation loss" in out
    ref_metrics, ref_ledger = reference
    got = per_step(str(tmp_path))
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == ref_metrics  # bit for bit: json keeps every float exactly
    assert ledger(str(tmp_path)) == ref_ledger
    assert len({h for _, h in ref_ledger}) == STEPS  # no batch repeated


def test_kill_9_while_saving_every_step_leaves_a_restorable_checkpoint(tmp_path, data_dir):
    args = [*RUN, f"--workdir={tmp_path}", f"--config.data.tfds_data_dir={data_dir}",
            "--config.train.checkpoint_every=1", "--config.train.eval_every=0"]
    code, _ = run_until(args, 12, signal.SIGKILL)
    assert code == -signal.SIGKILL
    out = cli("fmjax.train", *args, "--config.train.steps=14")
    assert "resumed from step 1" in out and "WARNING" not in out  # 11, 12 or 13: all verify
