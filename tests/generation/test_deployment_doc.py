"""docs/deployment.md's vLLM recipe up to vLLM itself (which needs a GPU): the Hugging Face
export of a run with fmjax's own SentencePiece tokenizer (with the tokenizer_config.json the
export writes for it) loads in transformers (what vLLM reads the tokenizer and config with),
encodes and decodes as fmjax does, and its greedy decode equals fmjax's Generator."""
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fmjax.generation import server  # noqa: E402
from fmjax.hf import conversion  # noqa: E402
from tests.generation.test_stablehlo_export import (  # noqa: E402
    PROMPTS, random_checkpoint, sentencepiece_config)

TEXTS = [*PROMPTS, " leading space", "tabs\tand  spaces  \n", "unicode: é 日本"]
MAX_NEW = 10


def test_the_documented_hf_directory_tokenizes_and_decodes_as_fmjax(tmp_path):
    config, data = sentencepiece_config(tmp_path, "gpt2")
    ckpt = random_checkpoint(str(tmp_path / "ckpt"), config, data)
    hf_dir = tmp_path / "hf"
    files = conversion.export_hf("gpt2", ckpt, str(hf_dir), log=lambda *_: None)
    assert {"tokenizer.model", "tokenizer_config.json"} <= set(files), files
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    generator = server.Generator.load(ckpt)
    ours = generator.tokenizer
    for text in TEXTS:
        assert tokenizer(text)["input_ids"] == [ours.bos_id, *ours.encode(text)], text
        assert tokenizer.decode(ours.encode(text)) == text
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    want = [list(c.token_ids) for (c,) in generator.generate(PROMPTS, max_new_tokens=MAX_NEW)]
    for prompt, ids in zip(PROMPTS, want):
        inputs = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False,
                                 pad_token_id=ours.pad_id)[0, inputs.input_ids.shape[1]:]
        out = out.tolist()
        assert (out[:out.index(ours.eos_id)] if ours.eos_id in out else out) == ids, prompt
