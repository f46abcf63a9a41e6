"""A mixture-of-experts decoder (configs/moe_tiny.py) pretrains through `python -m fmjax.train`
with its experts split over mesh.expert = 2: the loss falls and metrics.jsonl carries the
auxiliary losses and the dropped-assignment count."""
import json
import os

from tests.e2e.test_train_cli import cli, metrics


def test_moe_tiny_trains_with_experts_split_over_two_devices(tmp_path, data_dir):
    workdir = str(tmp_path / "moe")
    out = cli("fmjax.train", "--config=configs/moe_tiny.py", f"--workdir={workdir}",
              f"--config.data.tfds_data_dir={data_dir}", "--config.mesh.expert=2")
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["model"]["moe"]["num_experts"] == 4 and saved["mesh"]["expert"] == 2
    rows = metrics(workdir)
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 20, 40]
    assert evals[0]["eval_loss"] > 5.8  # ~ln(512) at init
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.8
    assert train[-1]["loss"] < train[0]["loss"] - 0.5
    for r in train:
        assert 1.0 <= r["moe_load_balance"] < 2.0  # E sum f p: 1 when balanced, <= K here
        assert r["moe_router_z"] > 0 and r["moe_dropped"] == 0  # dropless
    assert "validation loss" in out and "sample:" in out
