"""Imported models keep their own tokenizers: `fmjax.convert import` carries a tokenizer.json
(GPT-2's byte-level BPE, Llama 3's, BERT's WordPiece) into the checkpoint with the special ids
its tokenizer_config.json names; fmjax encodes exactly as transformers does; export writes a
tokenizer transformers loads; the seam tells the kinds apart by their bytes."""
import os
import pickle

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("torch")

from fmjax import config as config_lib  # noqa: E402
from fmjax.config import ConfigError  # noqa: E402
from fmjax.data import hf_tokenizer, sp_tokenizer, tokenizer_files  # noqa: E402
from fmjax.generation import loading  # noqa: E402
from fmjax.hf import conversion, tiny_models  # noqa: E402
from fmjax.training import checkpoint  # noqa: E402

TEXTS = ["def f(x):\n    return x + 1\n", "Question: Why is the sky blue?\nAnswer: light  é",
         "  leading spaces and\ttabs", "<|endoftext|> inside text"]
QUIET = dict(log=lambda msg: None)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """{family: (HF directory, fmjax checkpoint)} for tiny gpt2, llama and bert."""
    root = tmp_path_factory.mktemp("tok")
    out = {}
    for family in ("gpt2", "llama", "bert"):
        source = getattr(tiny_models, f"save_{family}")(str(root / f"hf_{family}"))
        ckpt = str(root / f"ckpt_{family}")
        conversion.import_hf(family, source, ckpt, **QUIET)
        out[family] = (source, ckpt)
    return out


def _load(ckpt):
    config_dict, data = checkpoint.read_source(ckpt)
    return config_lib.from_json_dict(config_dict), data


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_import_keeps_the_tokenizer_json_and_its_special_ids(imported, family):
    source, ckpt = imported[family]
    config, data = _load(ckpt)
    assert data == open(os.path.join(source, "tokenizer.json"), "rb").read()
    ref = transformers.AutoTokenizer.from_pretrained(source)
    expected = {"pad_id": ref.pad_token_id, "bos_id": ref.bos_token_id,
                "eos_id": ref.eos_token_id, "unk_id": ref.unk_token_id,
                "mask_id": ref.mask_token_id}
    assert {k: config.tokenizer[k] for k in expected} == {
        k: -1 if v is None else v for k, v in expected.items()}
    if family == "bert":  # masked-LM scoring and the mlm objective use the real [MASK]
        from fmjax.objectives import mlm
        assert mlm.mask_id(config) == ref.mask_token_id < config.model.vocab_size - 1


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_encoding_equals_transformers(imported, family):
    source, ckpt = imported[family]
    config, data = _load(ckpt)
    tokenizer = loading.load_run(ckpt)[2]
    assert isinstance(tokenizer, hf_tokenizer.HFTokenizer)
    ref = transformers.AutoTokenizer.from_pretrained(source)
    assert tokenizer.prefix_ids == {"gpt2": (), "llama": (ref.bos_token_id,),
                                    "bert": (ref.cls_token_id,)}[family]
    for text in TEXTS:
        ids = list(tokenizer.prefix_ids) + tokenizer.encode(text)
        full = ref.encode(text)
        # BERT's post-processor also ends a text with [SEP]; fmjax scores without it
        assert ids == (full[:-1] if family == "bert" else full), text
        assert tokenizer.encode(text) == ref.encode(text, add_special_tokens=False)
        assert tokenizer.decode(tokenizer.encode(text)) == ref.decode(
            ref.encode(text, add_special_tokens=False), skip_special_tokens=True)
    again = pickle.loads(pickle.dumps(tokenizer))  # grain workers get it pickled
    assert again.encode(TEXTS[1]) == tokenizer.encode(TEXTS[1])
    assert (again.bos_id, again.eos_id) == (tokenizer.bos_id, tokenizer.eos_id)


def test_export_writes_a_tokenizer_transformers_loads(imported, tmp_path):
    source, ckpt = imported["gpt2"]
    out = str(tmp_path / "export")
    files = conversion.export_hf("gpt2", ckpt, out, **QUIET)
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(files)
    ref, back = (transformers.AutoTokenizer.from_pretrained(d) for d in (source, out))
    for text in TEXTS:
        assert back.encode(text) == ref.encode(text)
    assert (back.bos_token, back.eos_token) == (ref.bos_token, ref.eos_token)


def test_the_seam_tells_the_kinds_apart_by_their_bytes(imported, tmp_path):
    _, ckpt = imported["llama"]
    config, data = _load(ckpt)
    path = tmp_path / "tokenizer.model"  # the name a run directory gives any kind
    path.write_bytes(data)
    assert tokenizer_files.kind_of(data[:64]).name == "hf_tokenizers"
    opened = tokenizer_files.open_tokenizer(str(path), config)
    assert isinstance(opened, hf_tokenizer.HFTokenizer) and opened.bos_id == config.tokenizer.bos_id
    sp_path = sp_tokenizer.train_sentencepiece(
        tiny_models.training_texts(), vocab_size=600, output_path=str(tmp_path / "sp.model"))
    with open(sp_path, "rb") as f:
        assert tokenizer_files.kind_of(f.read(64)).name == "sentencepiece"
    assert isinstance(tokenizer_files.open_tokenizer(sp_path, config), sp_tokenizer.Tokenizer)


def test_a_tokenizer_the_model_cannot_hold_is_refused(imported, tmp_path):
    _, ckpt = imported["gpt2"]
    config, data = _load(ckpt)
    path = tmp_path / "tokenizer.json"
    path.write_bytes(data)
    tokenizer = tokenizer_files.open_tokenizer(str(path), config)
    tokenizer.check_against(config)
    small = config_lib.from_json_dict(config.to_dict())
    small.model.vocab_size = 100
    with pytest.raises(ConfigError, match=r"config.model.vocab_size = 100 but the tokenizer .* "
                       r"has 512 tokens"):
        tokenizer.check_against(small)
    small = config_lib.from_json_dict(config.to_dict())
    small.tokenizer.eos_id = 9999
    with pytest.raises(ConfigError, match=r"config.tokenizer.eos_id = 9999 .* set "
                       r"--config.tokenizer.eos_id"):
        tokenizer.check_against(small)
    config.tokenizer.path = str(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="no such file.*tokenizer.json"):
        tokenizer_files.ensure_tokenizer(config)
