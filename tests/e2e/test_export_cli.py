"""python -m fmjax.export: --format=stablehlo writes the serving artifact (flags reach the
library: --checkpoint, --max_length, --platforms), and each mistake in the new flags, or a
checkpoint the format cannot take, is one `error:` line naming the flag, the value and the fix,
exit status 2, nothing written. (The artifact's contents and its reader:
tests/generation/test_stablehlo_export.py.)"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fmjax.quantization import ptq
from tests.generation.test_stablehlo_export import random_checkpoint, sentencepiece_config
from tests.helpers import ROOT, cpu_env


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{"gpt2": float export, "int8": its quantization, "bert": an encoder's export}."""
    root = tmp_path_factory.mktemp("export_cli")
    config, data = sentencepiece_config(root, "gpt2")
    gpt2 = random_checkpoint(str(root / "gpt2"), config, data)
    config, data = sentencepiece_config(root, "bert")
    return {"gpt2": gpt2, "int8": ptq.quantize_checkpoint(gpt2, str(root / "int8"), "int8", 0).path,
            "bert": random_checkpoint(str(root / "bert"), config, data)}


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "fmjax.export", *args], cwd=cwd,
                          env=cpu_env(1), capture_output=True, text=True, timeout=300)


def test_stablehlo_format_writes_the_artifact(checkpoints, tmp_path):
    out = tmp_path / "served"
    result = run("--format=stablehlo", f"--checkpoint={checkpoints['gpt2']}",
                 f"--output={out}", "--max_length=32", "--platforms=cpu,cuda", cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out / "weights.npz", allow_pickle=False) as npz:
        weight_bytes = sum(npz[k].nbytes for k in npz.files)
    assert result.stdout.strip().splitlines()[-1] == (
        f"exported gpt2 (export of {checkpoints['gpt2']}) for serving: prefill + decode, "
        f"max_length 32, {weight_bytes:,} bytes of weights -> {out}")
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["max_length"], manifest["platforms"], manifest["step"]) == (
        32, ["cpu", "cuda"], -1)
    batch, _, length, _ = manifest["cache"]["layer_0/attn/cached_key"]["shape"]  # [B, G, S, K]
    assert (batch, length) == ("b", 32)
    assert sorted(os.listdir(out)) == ["decode.jax_export", "manifest.json",
                                       "prefill.jax_export", "tokenizer.model", "weights.npz"]


CASES = [
    (["--format=onnx", "--checkpoint=GPT2"],
     "--format=onnx: unknown format; use --format=params"),
    (["--checkpoint=GPT2", "--max_length=32"],
     "--max_length=32 applies to --format=stablehlo only"),
    (["--format=stablehlo", "--checkpoint=GPT2", "--platforms=cpu,gpu"],
     "--platforms=cpu,gpu: unknown platform 'gpu'; use a comma-separated subset of "
     "cpu,cuda,rocm,tpu"),
    (["--workdir=GPT2", "--checkpoint=GPT2"], "pass one of --workdir=DIR (a run) or "
                                              "--checkpoint=PATH"),
    (["--checkpoint=INT8"], "--checkpoint = 'INT8' is a quantized checkpoint (int8, made by "
                            "fmjax.quantize from GPT2); fmjax.export --format=params"),
    (["--format=stablehlo", "--checkpoint=BERT"],
     "model.family = 'bert' is an encoder model, which has no StableHLO export"),
    (["--format=stablehlo", "--checkpoint=GPT2", "--max_length=65"],
     "--max_length=65: the cache needs >= 2 slots"),
]


@pytest.mark.parametrize("args,message", CASES, ids=[c[1][:24] for c in CASES])
def test_a_mistake_is_one_error_line(checkpoints, tmp_path, args, message):
    def fill(text):
        for name, path in checkpoints.items():
            text = text.replace(name.upper(), path)
        return text

    out = tmp_path / "out"
    result = run(*map(fill, args), f"--output={out}", cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1 and fill(message) in lines[0], result.stderr[-3000:]
    assert not out.exists()
