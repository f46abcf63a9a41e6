"""The fine-tune stage through its CLI, starting from the session's pretrained workdir: the
embedded classification task (metrics, best checkpoint, resume), LM fine-tuning whose step-0
validation loss equals the pretraining run's final one, LoRA with a bitwise-frozen base, and
params-only export."""
import json
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from fmjax.training import checkpoint
from tests.e2e.conftest import FINETUNE
from tests.e2e.test_train_cli import TINY, cli, metrics

FT = FINETUNE


def test_classification_reports_metrics_and_keeps_the_best(finetune_run, data_dir):
    pretrained, workdir, out = finetune_run
    evals = [r for r in metrics(workdir) if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [0, 10, 20]
    for key in ("eval_loss", "eval_accuracy", "eval_precision", "eval_recall", "eval_f1",
                "eval_majority_baseline"):
        assert all(0 <= r[key] < 10 for r in evals), key
    best = max(evals, key=lambda r: (r["eval_f1"], -r["step"]))
    tracker = json.load(open(os.path.join(workdir, "best_tracker.json")))
    assert tracker["tracker"]["best_step"] == best["step"]
    assert os.path.isdir(os.path.join(workdir, "best", "params"))
    for line in ("pretrain validation loss", "fine-tune accuracy", "fine-tune f1",
                 "fine-tune majority baseline"):
        assert line in out
    # its own resume: 10 more steps continue from step 20
    out = cli("fmjax.finetune", *FT, f"--workdir={workdir}", f"--config.init_from={pretrained}",
              f"--config.data.tfds_data_dir={data_dir}", "--config.train.steps=30")
    assert "resumed from step 20" in out
    assert [r["step"] for r in metrics(workdir) if "eval_accuracy" in r][-1] == 30


@pytest.mark.parametrize("mesh", [(), ("--config.mesh.data=1", "--config.mesh.fsdp=2")],
                         ids=["same_mesh", "fsdp_mesh"])
def test_lm_finetune_starts_at_the_pretrained_validation_loss(full_run, tmp_path, data_dir, mesh):
    """Pretrained on data=2; fine-tuned on the same mesh (exact) or with params sharded over
    fsdp=2 instead (the restore reshards; reductions may reorder, so 1e-6 relative)."""
    pretrained, _ = full_run
    final = [r for r in metrics(pretrained) if "eval_loss" in r][-1]
    data_args = [a for a in TINY if a.startswith(("--config.data", "--config.train.eval_batches",
                                                  "--config.train.global_batch_size"))]
    cli("fmjax.finetune", "--config=configs/default.py", "--config.task.name=lm", *data_args,
        f"--workdir={tmp_path}", f"--config.init_from={pretrained}",
        f"--config.data.tfds_data_dir={data_dir}", "--config.train.steps=2",
        "--config.train.eval_every=2", "--config.train.checkpoint_every=2", *mesh)
    first = [r for r in metrics(str(tmp_path)) if "eval_loss" in r][0]
    assert first["step"] == 0
    if not mesh:
        assert first["eval_loss"] == final["eval_loss"]  # the hand-off is exact
    assert first["eval_loss"] == pytest.approx(final["eval_loss"], rel=1e-6)


def test_lora_trains_adapters_only_and_exports_merged(full_run, tmp_path, data_dir):
    pretrained, _ = full_run
    workdir = str(tmp_path / "lora")
    cli("fmjax.finetune", *FT, f"--workdir={workdir}", f"--config.init_from={pretrained}",
        f"--config.data.tfds_data_dir={data_dir}", "--config.train.steps=10",
        "--config.lora.rank=4", "--config.optim.learning_rate=1e-2")
    base, _, _ = checkpoint.read_params_to_host(pretrained)
    tuned, config, _ = checkpoint.read_params_to_host(workdir)
    assert config["lora"]["rank"] == 4
    frozen = tuned["model"]["backbone"]
    for path in ("embed/embedding", "layer_0/attn/query/kernel", "layer_1/mlp/down/kernel"):
        a, b = base, frozen
        for key in path.split("/"):
            a, b = a[key], b[key]
        assert a.tobytes() == b.tobytes(), path  # bitwise unchanged
    adapter_b = tuned["lora"]["backbone"]["layer_0"]["attn"]["query"]["lora_b"]
    assert np.abs(adapter_b).max() > 0  # the adapters trained
    # the optimizer holds state only for adapters and the head
    step_dir, _ = checkpoint.resolve_params_source(workdir)
    with ocp.PyTreeCheckpointer() as ckptr:
        opt_meta = ckptr.metadata(os.path.join(step_dir, "state")).item_metadata["opt_state"]
    trained = sum(x.size for x in _leaves(tuned["lora"])) + sum(
        x.size for x in _leaves(tuned["model"]["head"]))
    opt_elements = sum(int(np.prod(m.shape)) for m in _leaves(opt_meta) if hasattr(m, "shape"))
    assert 2 * trained <= opt_elements < 2 * trained + 100
    # export folds the adapters in: a plain classifier tree, no optimizer, no adapters
    out = str(tmp_path / "export")
    cli("fmjax.export", f"--workdir={workdir}", f"--output={out}")
    exported, exported_config, _ = checkpoint.read_params_to_host(out)
    assert sorted(exported) == ["backbone", "head"] and exported_config["lora"]["rank"] == 0
    merged_query = exported["backbone"]["layer_0"]["attn"]["query"]["kernel"]
    assert not np.array_equal(merged_query, frozen["layer_0"]["attn"]["query"]["kernel"])


def _leaves(tree):
    import jax
    return jax.tree.leaves(tree)
