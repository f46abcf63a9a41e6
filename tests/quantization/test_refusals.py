"""Issue 23, item 6: a quantized checkpoint is never silently dequantized into a tool that needs
float weights. Fine-tuning (quantization-aware training too starts from float weights), the
Hugging Face exporter and quantizing again refuse it, naming the field, the checkpoint and the
float one to pass."""
import pytest

from fmjax.config import base_config
from fmjax.hf import conversion
from fmjax.quantization import guard, ptq
from fmjax.training import finetune_stage


def test_finetune_refuses_a_quantized_checkpoint(float_export, quantized, tmp_path):
    config = base_config()
    config.init_from = quantized["int4"].path
    with pytest.raises(guard.QuantizedCheckpoint) as e:
        finetune_stage.finetune(config, str(tmp_path / "ft"))
    message = str(e.value)
    assert message.startswith(f"config.init_from = '{quantized['int4'].path}' is a quantized "
                              "checkpoint (int4, groups of 32, made by fmjax.quantize from "
                              f"{float_export}); fine-tuning needs float weights")
    assert f"set --config.init_from to the float checkpoint ({float_export}), with " \
        "--config.qat.scheme=int8 to train for the quantized export" in message
    assert not (tmp_path / "ft").exists()  # refused before anything was written


def test_hf_export_refuses_a_quantized_checkpoint(float_export, quantized, tmp_path):
    with pytest.raises(guard.QuantizedCheckpoint,
                       match=r"--workdir_or_checkpoint = .* is a quantized checkpoint \(int8, "
                             r"made by .*export to Hugging Face needs float weights and will "
                             r"not dequantize it; export the float checkpoint it was quantized "
                             f"from \\({float_export}\\)"):
        conversion.export_hf("gpt2", quantized["int8"].path, str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()


def test_quantizing_a_quantized_checkpoint_is_refused(float_export, quantized, tmp_path):
    with pytest.raises(guard.QuantizedCheckpoint, match=f"quantize the float checkpoint it was "
                                                        f"made from \\({float_export}\\)"):
        ptq.quantize_checkpoint(quantized["int8"].path, str(tmp_path / "again"), "int4", 32)


def test_float_checkpoints_pass_the_guard(float_export):
    guard.refuse({"model": {}}, path=float_export, field="f", tool="t", fix="x")
