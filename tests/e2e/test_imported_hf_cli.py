"""An imported Hugging Face GPT-2 with its own byte-level BPE tokenizer, through the CLIs:
convert import keeps the tokenizer.json; evaluate runs ARC-Easy, PIQA and COPA few-shot from
the shipped data; generate decodes greedily as transformers does, with the same tokenizer;
finetune trains on it."""
import json

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from fmjax.hf import tiny_models  # noqa: E402
from tests.e2e.test_train_cli import cli  # noqa: E402


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    source = tiny_models.save_gpt2(str(root / "hf"))
    ckpt = str(root / "ckpt")
    out = cli("fmjax.convert", "import", "--family=gpt2", f"--hf_dir={source}",
              f"--output={ckpt}")
    assert "tokenizer: kept" in out
    return source, ckpt


def test_few_shot_arc_piqa_copa_on_an_imported_model(imported, tmp_path):
    _, ckpt = imported
    out_json = tmp_path / "results.json"
    text = cli("fmjax.evaluate", f"--checkpoint={ckpt}", "--tasks=arc_easy,piqa,copa",
               "--num_fewshot=3", "--limit=12", f"--output={out_json}")
    results = json.loads(out_json.read_text())
    for task in ("arc_easy", "piqa", "copa"):
        assert f"{task:<28}     3 acc " in text
        row = results["results"][task]
        assert 0.0 <= row["acc,none"] <= 1.0 and 0.0 <= row["acc_norm,none"] <= 1.0
        assert results["n-samples"][task]["effective"] == 12
        assert results["n-shot"][task] == 3


def test_generate_decodes_as_transformers_with_the_models_tokenizer(imported):
    source, ckpt = imported
    prompt = "def join(a, b):\n    return"
    out = cli("fmjax.generate", f"--workdir={ckpt}", f"--prompt={prompt}", "--temperature=0",
              "--max_new_tokens=12")
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    model = transformers.GPT2LMHeadModel.from_pretrained(source).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        greedy = model.generate(ids, max_new_tokens=12, do_sample=False,
                                pad_token_id=tokenizer.eos_token_id)
    new = greedy[0, ids.shape[1]:].tolist()
    eos = tokenizer.eos_token_id
    new = new[:new.index(eos)] if eos in new else new
    assert np.asarray(new).size > 0
    assert f"--- sample 0 (export) ---\n{prompt + tokenizer.decode(new)}\n" in out


@pytest.mark.slow
def test_finetune_starts_from_an_imported_model_with_its_tokenizer(imported, tmp_path,
                                                                   data_dir):
    _, ckpt = imported
    workdir = tmp_path / "ft"
    out = cli("fmjax.finetune", "--config=configs/default.py", "--config.task.name=lm",
              f"--config.init_from={ckpt}", f"--workdir={workdir}",
              f"--config.data.tfds_data_dir={data_dir}", "--config.train.steps=2",
              "--config.train.global_batch_size=4", "--config.train.eval_every=2",
              "--config.train.eval_batches=1", "--config.train.checkpoint_every=2",
              "--config.train.sample_tokens=4", timeout=600)
    assert "fine-tune (lm) finished: 2 steps" in out, out
    assert (workdir / "tokenizer.model").read_bytes()[:1] == b"{"  # the tokenizer.json
