"""Quantization-aware fine-tuning through the fine-tune stage, in-process (the embedded
classification task, from a tiny pretrained run): the run's own fake-quantized evaluation is
the score of its int8 export (python -m fmjax.quantize's library, then the task's evaluation of
the integers), with and without LoRA; its float weights score otherwise; and a run killed
(SIGTERM) after a checkpoint and resumed ends bit for bit where an uninterrupted run does."""
import json
import os

import pytest

from fmjax.quantization import ptq
from fmjax.tasks import checkpoint_eval
from fmjax.training import pretrain_stage
from tests.helpers import (assert_trees_bitwise_equal, finetune_keeping_final as finetune,
                           metrics_rows, preempted_and_resumed, tiny_config)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_dir):
    c = tiny_config()
    c.model.vocab_size, c.model.seq_len, c.tokenizer.train_chars = 512, 64, 1_000_000
    c.data.tfds_data_dir = data_dir
    c.mesh.data = -1
    c.train.update(steps=2, log_every=1, eval_every=2, eval_batches=1, checkpoint_every=2,
                   sample_tokens=4)
    workdir = str(tmp_path_factory.mktemp("pretrained"))
    pretrain_stage.train(c, workdir)
    return workdir


def qat_config(data_dir, pretrained, steps=8, **lora):
    c = tiny_config()
    c.init_from = pretrained
    c.mesh.data = -1
    c.task.name, c.task.select_metric = "classification", "eval_f1"
    c.data.update(source="stdlib_functions", validation_percent=20, max_examples=96,
                  tfds_data_dir=data_dir)
    c.train.update(steps=steps, log_every=1, eval_every=4, checkpoint_every=4)
    c.optim.learning_rate = 3e-3
    c.qat.scheme = "int8"
    c.lora.update(**lora)
    return c


def assert_int8_export_scores_as_the_run(workdir, tmp_path, report):
    """The best step's fake-quantized evaluation == the task's score of the int8 export."""
    best = os.path.join(workdir, "best")
    int8 = ptq.quantize_checkpoint(best, str(tmp_path / f"{os.path.basename(workdir)}_int8"),
                                   "int8")
    scored = checkpoint_eval.evaluate_checkpoint(int8.path)
    assert scored["quantization"] == "int8"
    for key in ("eval_accuracy", "eval_f1", "eval_precision", "eval_recall"):
        assert scored[key] == report.best[key], key
    assert scored["eval_loss"] == pytest.approx(report.best["eval_loss"], rel=1e-6)
    return scored, checkpoint_eval.evaluate_checkpoint(best)


def test_the_int8_export_scores_what_qat_evaluated_and_resume_is_bitwise(
        pretrained, data_dir, tmp_path, monkeypatch):
    full, final = str(tmp_path / "full"), []
    report = finetune(qat_config(data_dir, pretrained), full, final)
    assert report.steps == 8 and report.best_step in (0, 4, 8)
    int8, float_weights = assert_int8_export_scores_as_the_run(full, tmp_path, report)
    assert float_weights["quantization"] == ""
    assert float_weights["eval_loss"] != int8["eval_loss"]  # scored without fake quantization
    losses = {r["step"]: r["loss"] for r in metrics_rows(full) if "loss" in r}
    assert losses[8] < losses[1]

    killed = str(tmp_path / "killed")
    resumed = preempted_and_resumed(monkeypatch, 4, qat_config(data_dir, pretrained), killed)
    assert {r["step"]: r["loss"] for r in metrics_rows(killed) if "loss" in r} == losses
    assert_trees_bitwise_equal(resumed, final[0])  # params, Adam's moments, step, rng


def test_with_lora_the_merged_int8_export_scores_what_qat_evaluated(pretrained, data_dir,
                                                                    tmp_path):
    workdir = str(tmp_path / "lora")
    report = finetune(qat_config(data_dir, pretrained, steps=4, rank=4, alpha=8.0), workdir, [])
    assert json.load(open(os.path.join(workdir, "config.json")))["lora"]["rank"] == 4
    assert_int8_export_scores_as_the_run(workdir, tmp_path, report)
