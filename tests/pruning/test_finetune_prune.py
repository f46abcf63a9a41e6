"""Gradual pruning through the fine-tune stage in-process (task lm on the stdlib corpus, from a
tiny pretrained run): the sparsity reaches the target and is logged, the best checkpoint is
chosen among steps at the target only, and a run killed (SIGTERM) mid-ramp and resumed ends
bit for bit where an uninterrupted run does: params, optimizer state and masks."""
import os

import jax
import pytest

from fmjax.pruning import masks
from fmjax.training import checkpoint, pretrain_stage
from tests.helpers import (assert_trees_bitwise_equal, finetune_keeping_final as finetune,
                           metrics_rows, preempted_and_resumed)
from tests.training.test_loop import tiny as loop_tiny

pytestmark = pytest.mark.slow


def tiny(data_dir, **train):
    """tests/training/test_loop.py's tiny run, 2 steps and 2 evaluation batches by default."""
    return loop_tiny(data_dir, **{"steps": 2, "eval_batches": 2, **train})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_dir):
    workdir = str(tmp_path_factory.mktemp("pretrained"))
    pretrain_stage.train(tiny(data_dir), workdir)
    return workdir


def pruning_config(data_dir, pretrained):
    c = tiny(data_dir, steps=12)
    c.task.name = "lm"
    c.init_from = pretrained
    c.prune.update(target_sparsity=0.75, start_step=0, end_step=8, frequency=2)
    return c


def test_killed_mid_ramp_and_resumed_equals_uninterrupted(pretrained, data_dir, tmp_path,
                                                          monkeypatch):
    full, final = str(tmp_path / "full"), []
    report = finetune(pruning_config(data_dir, pretrained), full, final)
    evals = {r["step"]: r for r in metrics_rows(full) if "eval_loss" in r}
    assert [evals[s]["sparsity"] for s in (0, 6, 12)] == [0.0, pytest.approx(0.75 * (1 - 0.25**3)),
                                                           0.75]
    assert report.best_step == 12  # the denser steps 0 and 6 scored better, and do not count
    best, _, _ = checkpoint.read_params_to_host(os.path.join(full, "best"))
    assert best["layers"]["mlp"]["up"]["kernel"].size * 0.75 == \
        (best["layers"]["mlp"]["up"]["kernel"] == 0).sum()

    killed = str(tmp_path / "killed")
    resumed = preempted_and_resumed(monkeypatch, 6, pruning_config(data_dir, pretrained), killed)
    losses = lambda w: {r["step"]: r["loss"] for r in metrics_rows(w) if "loss" in r}  # noqa: E731
    assert losses(killed) == losses(full)
    a = assert_trees_bitwise_equal(resumed, final[0])
    assert any("masks" in jax.tree_util.keystr(p) for p, _ in a)
    zeros = masks.flat(resumed.params)
    kept = masks.flat(resumed.opt_state.masks)
    assert all((zeros[p][~kept[p]] == 0).all() for p in kept)
