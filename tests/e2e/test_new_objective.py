"""Forking for a new objective (docs/extending.md, "Adding an objective"): the toy next-next-token
objective is one file plus one config, found by name on first use, and trains through the
normal CLI."""
import json
import os
import subprocess
import sys

from tests.e2e.test_train_cli import ROOT, cli, metrics

OBJECTIVE_FILE = os.path.join("fmjax", "objectives", "next_next_token.py")


def test_toy_objective_trains_through_the_cli(tmp_path, data_dir):
    workdir = str(tmp_path / "nnt")
    cli("fmjax.train", "--config=configs/next_next_token_tiny.py", f"--workdir={workdir}",
        f"--config.data.tfds_data_dir={data_dir}")
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["objective"] == "next_next_token"
    rows = metrics(workdir)
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in train] == list(range(5, 41, 5))
    assert [r["step"] for r in evals] == [0, 20, 40]
    assert evals[0]["eval_loss"] > 5.8  # ~ln(512) at init
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.8
    assert train[-1]["loss"] < train[0]["loss"] - 0.5


def test_toy_objective_needs_no_edit_outside_its_file():
    """Nothing else in the package names it (no central list), and the registry imports
    fmjax/objectives/next_next_token.py only when the name is first asked for."""
    for directory, _, files in os.walk(os.path.join(ROOT, "fmjax")):
        for name in files:
            path = os.path.join(directory, name)
            if name.endswith(".py") and os.path.relpath(path, ROOT) != OBJECTIVE_FILE:
                assert "next_next_token" not in open(path, encoding="utf-8").read(), path
    probe = (
        "import sys\n"
        "from fmjax import objectives\n"
        "from fmjax.config import base_config\n"
        "module = 'fmjax.objectives.next_next_token'\n"
        "assert module not in sys.modules\n"
        "config = base_config()\n"
        "config.objective = 'next_next_token'\n"
        "objective = objectives.get(config)\n"
        "assert module in sys.modules and type(objective).__module__ == module\n"
        "print(objective.model_kinds)\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "('decoder',)"


def test_the_extending_guide_shows_the_whole_file():
    guide = open(os.path.join(ROOT, "docs", "extending.md"), encoding="utf-8").read()
    source = open(os.path.join(ROOT, OBJECTIVE_FILE), encoding="utf-8").read()
    assert f"```python\n{source}```" in guide
