"""A tiny imported GPT-2 (random weights, its own byte-level BPE tokenizer) as a float export,
and its int8 and int4 quantizations, shared by the tests of this directory."""
import pytest


@pytest.fixture(scope="session")
def float_export(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from fmjax.hf import conversion, tiny_models
    root = tmp_path_factory.mktemp("quant_float")
    source = tiny_models.save_gpt2(str(root / "hf"))
    return conversion.import_hf("gpt2", source, str(root / "ckpt"), log=lambda *_: None).path


@pytest.fixture(scope="session")
def quantized(float_export, tmp_path_factory):
    """{scheme: ptq.Result} for int8 and int4 (groups of 32) of `float_export`."""
    from fmjax.quantization import ptq
    root = tmp_path_factory.mktemp("quant")
    return {scheme: ptq.quantize_checkpoint(float_export, str(root / scheme), scheme, 32)
            for scheme in ("int8", "int4")}
