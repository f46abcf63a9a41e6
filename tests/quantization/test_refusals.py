"""Issue 23, item 6: a quantized checkpoint is never silently dequantized into a tool that needs
float weights. Fine-tuning takes it only as QLoRA's frozen base (adapters, no QAT, no pruning);
the Hugging Face exporter and quantizing again refuse it, naming the field, the checkpoint and
the float one to pass."""
import pytest

from fmjax.config import ConfigError, base_config
from fmjax.hf import conversion
from fmjax.quantization import guard, ptq
from fmjax.training import finetune_stage


def test_finetune_over_a_quantized_checkpoint_needs_lora(float_export, quantized, tmp_path):
    """Without adapters its integers would have to train: refused, with both ways out."""
    config = base_config()
    config.init_from = quantized["int4"].path
    with pytest.raises(guard.QuantizedCheckpoint) as e:
        finetune_stage.finetune(config, str(tmp_path / "ft"))
    assert str(e.value) == (
        f"config.lora.rank = 0: config.init_from = '{quantized['int4'].path}' is a quantized "
        "checkpoint (int4, groups of 32), whose integer weights cannot train and are never "
        "dequantized into float ones; set --config.lora.rank=8 (say) to train LoRA adapters "
        "over the frozen quantized base (QLoRA), or set --config.init_from to the float "
        f"checkpoint ({float_export})")
    assert not (tmp_path / "ft").exists()  # refused before anything was written


@pytest.mark.parametrize("field, value, message", [
    ("qat.scheme", "int8", "config.qat.scheme = 'int8': config.init_from = '{path}' is a "
     "quantized checkpoint (int8), already on its integer grid; unset --config.qat.scheme"),
    ("prune.target_sparsity", 0.5, "config.prune.target_sparsity = 0.5: config.init_from = "
     "'{path}' is a quantized checkpoint (int8), which stays frozen; prune the float "
     "checkpoint (python -m fmjax.prune), then quantize it"),
])
def test_qlora_refuses_what_cannot_train_a_frozen_base(quantized, tmp_path, field, value,
                                                       message):
    config = base_config()
    config.init_from = quantized["int8"].path
    config.lora.rank = 4
    section, key = field.split(".")
    config[section][key] = value
    with pytest.raises(ConfigError) as e:
        finetune_stage.finetune(config, str(tmp_path / "ft"))
    assert str(e.value).startswith(message.format(path=quantized["int8"].path))
    assert not (tmp_path / "ft").exists()


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
