"""Every model family pretrains with its objective through `python -m fmjax.train` (loss
falls) and fine-tunes a classifier on the embedded task through `python -m fmjax.finetune`:
BERT with MLM, T5 with span corruption, a decoder as a prefix LM."""
import json
import os

import pytest

from tests.e2e.conftest import FINETUNE
from tests.e2e.test_train_cli import cli, metrics

SHORT = ["--config.train.steps=40", "--config.train.eval_every=20",
         "--config.train.checkpoint_every=20"]


@pytest.mark.parametrize("name,family,objective", [
    ("bert_tiny", "bert", "mlm"),
    ("t5_tiny", "t5", "span_corruption"),
    ("prefix_lm_tiny", "llama", "prefix_lm"),
])
def test_pretrain_then_finetune(tmp_path, data_dir, name, family, objective):
    pretrain = str(tmp_path / name)
    out = cli("fmjax.train", f"--config=configs/{name}.py", f"--workdir={pretrain}",
              f"--config.data.tfds_data_dir={data_dir}", *SHORT)
    saved = json.load(open(os.path.join(pretrain, "config.json")))
    assert (saved["model"]["family"], saved["objective"]) == (family, objective)
    evals = [r["eval_loss"] for r in metrics(pretrain) if "eval_loss" in r]
    assert len(evals) == 3 and evals[0] > 6.0  # ~ln(vocab) at init
    assert evals[-1] < evals[0] - 0.8, evals
    assert "validation loss" in out

    tuned = str(tmp_path / (name + "_cls"))
    out = cli("fmjax.finetune", *FINETUNE, f"--workdir={tuned}", f"--config.init_from={pretrain}",
              f"--config.data.tfds_data_dir={data_dir}", "--config.train.steps=10")
    rows = [r for r in metrics(tuned) if "eval_accuracy" in r]
    assert [r["step"] for r in rows] == [0, 10]
    for key in ("eval_f1", "eval_precision", "eval_recall", "eval_majority_baseline"):
        assert key in rows[-1]
    ft_config = json.load(open(os.path.join(tuned, "config.json")))
    assert ft_config["model"]["family"] == family  # the shape came from the checkpoint
    assert "fine-tune accuracy" in out and os.path.isdir(os.path.join(tuned, "best"))
