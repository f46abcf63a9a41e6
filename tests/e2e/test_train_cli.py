"""End to end through the CLIs on the embedded stdlib corpus: training lowers the validation
loss, writes checkpoints, metrics and TensorBoard events; a restart resumes exactly."""
import json
import os
import re
import subprocess
import sys

import numpy as np

from tests.helpers import cpu_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = [
    "--config=configs/default.py",
    "--config.model.vocab_size=512", "--config.tokenizer.train_chars=1000000",
    "--config.model.d_model=64", "--config.model.n_layers=2", "--config.model.n_heads=4",
    "--config.model.seq_len=64", "--config.train.global_batch_size=8",
    "--config.train.log_every=5", "--config.train.eval_every=20", "--config.train.eval_batches=4",
    "--config.train.checkpoint_every=20", "--config.train.sample_tokens=16",
    "--config.optim.learning_rate=3e-3", "--config.optim.warmup_steps=5",
    "--config.optim.schedule=constant",
]


def cli(module, *args, timeout=300):
    env = cpu_env(2)
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_training_lowers_validation_loss_and_reports(full_run):
    workdir, out = full_run
    rows = metrics(workdir)
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 20, 40, 60]
    assert evals[0]["eval_loss"] > 5.5  # ~ln(512) at init
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 1.0
    train_rows = [r for r in rows if "loss" in r]
    for key in ("step", "loss", "learning_rate", "grad_norm", "tokens_per_sec", "mfu"):
        assert key in train_rows[-1]
    assert 0 < train_rows[-1]["mfu"] < 1
    for line in ("validation loss", "perplexity", "tokens/s", "MFU", "checkpoints", "sample:"):
        assert line in out


def test_report_ends_with_zero_and_few_shot_accuracy_of_the_embedded_task(full_run):
    # configs/default.py scores stdlib_next_line in the loop (0-shot) and 3-shot at the end
    workdir, out = full_run
    lines = out.rstrip().splitlines()
    assert lines[-1] == "=" * 72
    assert re.fullmatch(r"  stdlib_next_line acc  0-shot [01]\.\d\d  3-shot [01]\.\d\d  "
                        r"\(chance 0\.25, n=200\)", lines[-2]), lines[-2]
    scored = [r for r in metrics(workdir) if "stdlib_next_line/acc" in r]
    assert [r["step"] for r in scored] == [60]  # eval.every = 80 > 60 steps: at the end only
    for key in ("acc", "acc_norm", "3shot/acc", "3shot/acc_norm"):
        assert 0 <= scored[-1][f"stdlib_next_line/{key}"] <= 1
    assert f"0-shot {scored[-1]['stdlib_next_line/acc']:.2f}" in lines[-2]


def test_run_writes_config_checkpoints_tensorboard(full_run):
    workdir, _ = full_run
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["model"]["d_model"] == 64 and saved["train"]["steps"] == 60
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert steps == [20, 40, 60]
    events = os.listdir(os.path.join(workdir, "tensorboard"))
    assert any(name.startswith("events.out.tfevents") for name in events)
    assert os.path.exists(os.path.join(workdir, "tokenizer.model"))


def test_restart_resumes_from_the_saved_step_exactly(full_run, tmp_path, data_dir):
    workdir, _ = full_run
    resumed = str(tmp_path / "resumed")
    cache = tmp_path / "xla_cache"  # the second half runs the first half's compiled programs
    common = [*TINY, f"--workdir={resumed}", f"--config.data.tfds_data_dir={data_dir}",
              f"--config.compilation_cache_dir={cache}", "--config.train.steps=60"]
    # first half: stop after step 40 by asking for 40 steps, then continue to 60
    cli("fmjax.train", *common[:-1], "--config.train.steps=40")
    cached = sorted(os.listdir(cache))
    assert len(cached) >= 3  # init, train step, eval step (at least)
    out = cli("fmjax.train", *common)
    assert sorted(os.listdir(cache)) == cached  # nothing compiled afresh: every program cached
    assert "resumed from step 40" in out
    full = {r["step"]: r["loss"] for r in metrics(workdir) if "loss" in r}
    again = {r["step"]: r["loss"] for r in metrics(resumed) if "loss" in r and r["step"] > 40}
    assert sorted(again) == [45, 50, 55, 60]
    np.testing.assert_allclose([again[s] for s in sorted(again)],
                               [full[s] for s in sorted(again)], rtol=1e-6)


def test_generate_cli_uses_the_checkpoint_and_tokenizer(full_run):
    workdir, _ = full_run
    out = cli("fmjax.generate", f"--workdir={workdir}", "--prompt=import ", "--max_new_tokens=8",
              "--num_samples=2", "--temperature=0.7", "--top_k=20")
    assert out.count("--- sample") == 2 and "(step 60)" in out
    assert out.count("import ") >= 2
