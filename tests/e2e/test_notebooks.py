"""Every notebook under notebooks/ executes top to bottom on a real run's workdir."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.e2e.test_train_cli import ROOT

NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(ROOT, "notebooks")) if f.endswith(".ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, full_run, finetune_run, monkeypatch):
    workdir, _ = full_run
    monkeypatch.setenv("FMJAX_WORKDIR", workdir)
    monkeypatch.setenv("FMJAX_FINETUNE_WORKDIR", finetune_run[1])
    nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "saved" in outputs
    if name == "loss_curves.ipynb":
        assert os.path.exists(os.path.join(workdir, "loss_curves.png"))
        assert os.path.exists(os.path.join(workdir, "accuracy.png"))  # eval tasks in the run
        assert "stdlib_next_line acc  0-shot" in outputs
    if name == "quickstart.ipynb":
        assert "--- sample from step 60 ---" in outputs and "saved fine-tune plot" in outputs
        assert os.path.exists(os.path.join(workdir, "quickstart_curves.png"))
