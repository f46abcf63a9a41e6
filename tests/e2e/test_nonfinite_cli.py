"""A NaN loss through the real CLI: the run stops within one step with exit code 1, naming the
step and the last good checkpoint; with on_nonfinite=skip it drops those updates and exits 0."""
import os
import subprocess
import sys

from tests.e2e.test_train_cli import ROOT, TINY, metrics
from tests.helpers import cpu_env

EXPLODE = ["--config.optim.learning_rate=1e12", "--config.optim.warmup_steps=0",
           "--config.train.log_every=1", "--config.train.checkpoint_every=1",
           "--config.train.eval_every=0", "--config.train.steps=6"]


def run_train(workdir, data_dir, *extra):
    env = cpu_env(2)
    return subprocess.run([sys.executable, "-m", "fmjax.train", *TINY, *EXPLODE,
                           f"--workdir={workdir}", f"--config.data.tfds_data_dir={data_dir}",
                           *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_nan_loss_exits_1_naming_step_and_last_good_checkpoint(tmp_path, data_dir):
    result = run_train(tmp_path / "stop", data_dir)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "error: loss is nan at step 2" in result.stderr
    assert "Last good checkpoint: step 1" in result.stderr
    steps = os.listdir(tmp_path / "stop" / "checkpoints")
    assert sorted(int(s) for s in steps if s.isdigit()) == [1]  # nothing after the bad step


def test_skip_policy_drops_the_updates_and_finishes(tmp_path, data_dir):
    result = run_train(tmp_path / "skip", data_dir, "--config.train.on_nonfinite=skip")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [r for r in metrics(tmp_path / "skip") if "loss" in r]
    assert rows[0]["skipped"] == 0 and all(r["skipped"] == 1 for r in rows[1:])
