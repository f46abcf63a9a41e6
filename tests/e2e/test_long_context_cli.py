"""configs/long_context_tiny.py pretrains through `python -m fmjax.train` with its 1,024-token
rows split over mesh.context = 2 devices: the loss falls, and the run's mesh, config and
report say so."""
import json
import os

from tests.e2e.test_train_cli import cli, metrics


def test_long_context_tiny_trains_with_the_sequence_split_over_two_devices(tmp_path, data_dir):
    workdir = str(tmp_path / "long")
    out = cli("fmjax.train", "--config=configs/long_context_tiny.py", f"--workdir={workdir}",
              f"--config.data.tfds_data_dir={data_dir}")
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["mesh"]["context"] == 2 and saved["model"]["seq_len"] == 1024
    assert "'context': 2" in out  # the mesh the run printed
    rows = metrics(workdir)
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 15, 30]
    assert evals[0]["eval_loss"] > 5.8  # ~ln(512) at init
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.8
    assert train[-1]["loss"] < train[0]["loss"] - 0.8
    assert "validation loss" in out and "sample:" in out
