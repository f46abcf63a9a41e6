"""A user's mistake through any CLI is one line, `error: ...` naming the flag or config key and
the fix, on stderr, with exit status 2 and no traceback (tracebacks are for bugs); nothing is
written for it."""
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, cpu_env

CONFIG = os.path.join(ROOT, "configs", "default.py")
FINETUNE = os.path.join(ROOT, "configs", "finetune", "default.py")
MISSING = "/nonexistent/fmjax-run"

CASES = [
    (["fmjax.generate", f"--workdir={MISSING}", "--prompt=x"], f"--workdir={MISSING}"),
    (["fmjax.export", f"--workdir={MISSING}", "--output=OUT"], f"--workdir={MISSING}"),
    (["fmjax.finetune", f"--config={FINETUNE}", "--workdir=OUT", f"--config.init_from={MISSING}"],
     "config.init_from = '/nonexistent/fmjax-run'"),
    (["fmjax.train", f"--config={CONFIG}", "--workdir=OUT", "--config.mesh.data=3"],
     "set --config.mesh.data=-1"),
    (["fmjax.train", f"--config={CONFIG}", "--workdir=OUT", "--config.model.remat_policy=xx"],
     "config.model.remat_policy = 'xx': unknown policy; use one of none"),
    (["fmjax.train", f"--config={CONFIG}", "--workdir=OUT", "--config.optim.learning_rat=1"],
     "Did you mean 'optim.learning_rate'?"),
    (["fmjax.info", "--config=/nonexistent/config.py"], "no such config file"),
    (["fmjax.evaluate", f"--workdir={MISSING}", "--tasks=arc_easyy"],
     "Did you mean 'arc_easy'?"),
    (["fmjax.evaluate", f"--workdir={MISSING}", "--tasks=copa"], f"--workdir={MISSING}"),
    (["fmjax.convert", "export", "--family=gpt2", f"--workdir_or_checkpoint={MISSING}",
      "--output=OUT"], "not a workdir, a checkpoint step directory or an export"),
    (["fmjax.tokenizer", "train", "--input=/nonexistent/corpus.txt", "--vocab_size=300",
      "--output=OUT/t.model"], "matches no file"),
]


@pytest.mark.parametrize("argv,names", CASES, ids=[" ".join(c[0][:2]) for c in CASES])
def test_a_user_error_is_one_line_and_exit_2(argv, names, tmp_path):
    out = str(tmp_path / "out")
    argv = [a.replace("OUT", out) for a in argv]
    result = subprocess.run([sys.executable, "-m", *argv], cwd=tmp_path, env=cpu_env(1),
                            capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1 and names in lines[0], result.stderr[-3000:]
    assert not os.path.exists(out)  # refused before anything was written
