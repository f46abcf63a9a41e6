"""fmjax/cli.py's shared checks for the CLIs that read a checkpoint (evaluate, export, quantize,
prune): exactly one of --workdir / --checkpoint, --step only with --workdir."""
import pytest

from fmjax import cli


def test_checkpoint_source_returns_the_path_and_the_flag_that_named_it():
    assert cli.checkpoint_source("runs/a", None, None) == ("runs/a", "--workdir")
    assert cli.checkpoint_source("runs/a", None, 40) == ("runs/a", "--workdir")
    assert cli.checkpoint_source(None, "runs/a/best", None) == ("runs/a/best", "--checkpoint")


@pytest.mark.parametrize("workdir, checkpoint, step, message", [
    (None, None, None, "pass one of --workdir=DIR (a run) or --checkpoint=PATH"),
    ("runs/a", "runs/b", None, "pass one of --workdir=DIR (a run) or --checkpoint=PATH"),
    (None, "runs/b", 4, "--step=4 picks a step of --workdir; with --checkpoint=runs/b leave it "
                        "out"),
])
def test_checkpoint_source_refuses_with_the_fix(workdir, checkpoint, step, message):
    with pytest.raises(cli.UsageError, match="^" + message.replace("(", r"\(").replace(")", r"\)")
                       .replace(".", r"\.")):
        cli.checkpoint_source(workdir, checkpoint, step)
