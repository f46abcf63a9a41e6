"""python -m fmjax.quantize end to end on a tiny imported GPT-2, then fmjax.evaluate and
fmjax.generate on its output; the bad inputs of issue 23 item 6 as one `error:` line, exit 2."""
import subprocess
import sys

import pytest

from tests.e2e.test_train_cli import ROOT, cli
from tests.helpers import cpu_env


def cli_error(module, *args):
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=cpu_env(2),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    return errors[0]


def test_quantize_then_evaluate_and_generate(float_export, tmp_path):
    out = cli("fmjax.quantize", f"--checkpoint={float_export}", "--scheme=int4",
              "--group_size=32", f"--output={tmp_path / 'q4'}")
    assert (f"-> {tmp_path / 'q4'}: int4, groups of 32; 8 weights: 147,456 values as int4 + "
            "4,608 float32 scales; 1,792 values kept in float") in out
    text = cli("fmjax.evaluate", f"--checkpoint={tmp_path / 'q4'}", "--tasks=arc_easy",
               "--limit=8")
    assert "arc_easy" in text and " acc " in text
    prompt = "def join(a, b):"
    sample = cli("fmjax.generate", f"--workdir={tmp_path / 'q4'}", f"--prompt={prompt}",
                 "--temperature=0", "--max_new_tokens=8")
    assert f"--- sample 0 (export) ---\n{prompt}" in sample


def test_unknown_scheme_gets_a_did_you_mean(float_export, tmp_path):
    line = cli_error("fmjax.quantize", f"--checkpoint={float_export}", "--scheme=int16",
                     f"--output={tmp_path / 'q'}")
    assert line.startswith("error: --scheme='int16': no such quantization scheme; use one of "
                           "int4, int8.")
    assert "Did you mean" in line


def test_a_group_size_that_does_not_tile_names_the_sizes_that_do(float_export, tmp_path):
    line = cli_error("fmjax.quantize", f"--checkpoint={float_export}", "--scheme=int4",
                     f"--output={tmp_path / 'q'}")  # the default 128 > d_model 64
    assert line == ("error: --group_size=128: weight embed/embedding (512, 64) contracts 64 "
                    "inputs, which groups of 128 do not tile; use --group_size in {8, 16, 32, "
                    "64} (they tile every weight of this model), or --scheme=int8 (per channel, "
                    "no groups)")
    assert not (tmp_path / "q").exists()


def test_int8_takes_no_group_size(float_export, tmp_path):
    line = cli_error("fmjax.quantize", f"--checkpoint={float_export}", "--scheme=int8",
                     "--group_size=32", f"--output={tmp_path / 'q'}")
    assert line == ("error: --group_size=32: --scheme=int8 has one scale per output channel, "
                    "no groups; drop --group_size or use --scheme=int4")


def test_finetune_and_hf_export_refuse_it_in_one_line(quantized, tmp_path):
    line = cli_error("fmjax.finetune", "--config=configs/finetune/default.py",
                     f"--config.init_from={quantized['int8'].path}",
                     f"--workdir={tmp_path / 'ft'}")
    assert "is a quantized checkpoint (int8)" in line and "--config.lora.rank=8" in line
    line = cli_error("fmjax.convert", "export", "--family=gpt2",
                     f"--workdir_or_checkpoint={quantized['int8'].path}",
                     f"--output={tmp_path / 'hf'}")
    assert "is a quantized checkpoint (int8" in line and "export the float checkpoint" in line
