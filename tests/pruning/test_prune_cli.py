"""python -m fmjax.prune on the session's trained workdir (tests/e2e/conftest.py's full_run):
the export has exactly the asked sparsity in every block kernel and every other param bitwise
the source's, and fmjax.generate and fmjax.evaluate load it like any export (and score it
differently from the dense model); a user's mistake is one `error:` line naming the flag."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax import config as config_lib, models
from fmjax.pruning import masks
from fmjax.pruning.targets import is_block_kernel
from fmjax.training import checkpoint
from tests.e2e.conftest import full_run  # noqa: F401  (the session's trained workdir)
from tests.e2e.test_train_cli import cli
from tests.helpers import ROOT, cpu_env

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_prune_writes_an_export_that_evaluate_and_generate_load(full_run, tmp_path):  # noqa: F811
    workdir, _ = full_run
    out = str(tmp_path / "pruned")
    text = cli("fmjax.prune", f"--workdir={workdir}", "--sparsity=0.75", f"--output={out}")
    assert "0.7500 of the" in text and "pruned step 60" in text
    dense, dense_config, dense_tokenizer = checkpoint.read_params_to_host(workdir)
    pruned, pruned_config, pruned_tokenizer = checkpoint.read_params_to_host(out)
    assert pruned_config == dense_config and pruned_tokenizer == dense_tokenizer
    before, after = masks.flat(dense), masks.flat(pruned)
    assert sum(map(is_block_kernel, after)) == 12  # 2 unrolled layers x (q, k, v, out, up, down)
    for path, x in after.items():
        if is_block_kernel(path):
            assert (x == 0).mean() == 0.75, path
        else:
            assert x.tobytes() == before[path].tobytes(), path
    sample = cli("fmjax.generate", f"--workdir={out}", "--prompt=import ", "--max_new_tokens=8")
    assert "--- sample" in sample
    task = tmp_path / "mine.jsonl"
    task.write_text("\n".join(json.dumps({"context": f"def f{i}(x):\n    return", "choices":
                                          ["x", "None", "1"], "gold": i % 3})
                              for i in range(6)))
    results = tmp_path / "results.json"
    cli("fmjax.evaluate", f"--checkpoint={out}", f"--tasks=jsonl:{task}", f"--output={results}")
    row = json.loads(results.read_text())["results"][f"jsonl:{task}"]
    assert 0.0 <= row["acc,none"] <= 1.0 and f"{out} (step -1)" in results.read_text()
    two_four = str(tmp_path / "two_four")
    cli("fmjax.prune", f"--checkpoint={out}", "--pattern=2:4", f"--output={two_four}")
    kernel = checkpoint.read_params_to_host(two_four)[0]["layer_0"]["mlp"]["down"]["kernel"]
    groups = (kernel != 0).reshape(-1, 4, kernel.shape[-1]).sum(axis=1)  # [mlp, embed]
    assert (groups <= 2).all()  # 2:4 of an already 75%-sparse model: at most 2 of each 4


def odd_width_export(path, workdir):
    """An export of a model whose kernels contract over 30 inputs (not a multiple of 4)."""
    config_dict, tokenizer = checkpoint.read_source(workdir)
    config = config_lib.from_json_dict(config_dict)
    config.model.d_model, config.model.n_heads = 30, 6
    model, cfg = models.build(config)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, cfg.seq_len), jnp.int32))["params"]
    import flax.linen as nn
    checkpoint.export_params(path, nn.unbox(params), config.to_dict(), tokenizer)
    return path


@pytest.mark.parametrize("args,message", [
    (["--sparsity=1.0"], "error: --sparsity = 1.0: must be in [0, 1)"),
    (["--sparsity=-0.5"], "error: --sparsity = -0.5: must be in [0, 1)"),
    (["--method=magnitud", "--sparsity=0.5"], "Did you mean 'magnitude'?"),
    (["--pattern=2:4", "--sparsity=0.75"], "leave the sparsity out or set it to 0.5"),
    (["--pattern=2:4", "ODD"], "--pattern = '2:4': kernel layer_0/attn/key/kernel"),
])
def test_a_mistake_is_one_error_line(full_run, tmp_path, args, message):  # noqa: F811
    workdir, _ = full_run
    source = [f"--workdir={workdir}"]
    if "ODD" in args:
        args = [a for a in args if a != "ODD"]
        source = [f"--checkpoint={odd_width_export(str(tmp_path / 'odd'), workdir)}"]
    out = str(tmp_path / "out")
    result = subprocess.run([sys.executable, "-m", "fmjax.prune", *source, *args,
                             f"--output={out}"], cwd=ROOT, env=cpu_env(1), capture_output=True,
                            text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1 and message in lines[0], result.stderr[-3000:]
    assert not os.path.exists(out)
