"""SentencePiece training/loading: exact round trips on source code, config checks, CLI."""
import os
import pickle
import subprocess
import sys
import sysconfig

import pytest

from fmjax.config import ConfigError, base_config
from fmjax.data import stdlib_corpus
from fmjax.data import sp_tokenizer as tokenizer_lib, tokenizer_files

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STDLIB = sysconfig.get_paths()["stdlib"]

CRAFTED = [
    "\t\tx = 1\n\n   \n",
    "naïve — 日本語\r\n",
    "   leading and trailing   ",
    "def f(a,\tb):\n    return a  +  b\n\n\n",
    "\n",
    " ",
    "",
    "emoji 🙂 and a NUL \x00 and a form feed \x0c",
    "SentencePiece's own space mark ▁ and ▁▁ twice, then ' ▁ '",
]


def tiny_config(data_dir):
    config = base_config()
    config.data.tfds_data_dir = data_dir
    config.model.vocab_size = 512
    config.tokenizer.train_chars = 300_000
    return config


@pytest.fixture(scope="module")
def tokenizer(data_dir):
    return tokenizer_files.ensure_tokenizer(tiny_config(data_dir))


def stdlib_file_containing(predicate):
    for rel_path in stdlib_corpus.list_stdlib_files(STDLIB):
        text = open(os.path.join(STDLIB, rel_path), "rb").read().decode("utf-8", "replace")
        if predicate(text):
            return text
    raise AssertionError("no stdlib file matches")


def test_round_trips_crafted_strings(tokenizer):
    for text in CRAFTED:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_round_trips_real_stdlib_files(tokenizer):
    # CPython's own style rules forbid tabs and trailing whitespace in Lib/, so two variants
    # add them: the same file indented with tabs, and with CRLF endings and trailing spaces.
    textwrap_py = open(os.path.join(STDLIB, "textwrap.py"), encoding="utf-8").read()
    decoder_py = open(os.path.join(STDLIB, "json", "decoder.py"), encoding="utf-8").read()
    texts = [
        textwrap_py,
        decoder_py,
        stdlib_file_containing(lambda t: any(ord(c) > 127 for c in t)),
        stdlib_file_containing(lambda t: any(ord(c) > 0x3000 for c in t)),  # CJK / wide
        stdlib_file_containing(lambda t: "\ufffd" in t),  # not UTF-8 on disk
        textwrap_py.replace("    ", "\t"),
        decoder_py.replace("\n", "  \r\n"),
    ]
    for text in texts:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert len(tokenizer.encode(textwrap_py)) < 0.7 * len(textwrap_py)  # ~250 merges learned


def test_learns_pieces_spanning_newlines_and_indentation(tokenizer):
    pieces = [tokenizer.piece(i) for i in range(tokenizer.vocab_size)]
    assert any("\n" in p and len(p) > 1 for p in pieces)
    assert "▁▁▁▁" in pieces
    assert tokenizer.encode("\n") != [tokenizer.unk_id]


def test_special_ids_and_vocab_follow_the_config(tokenizer, data_dir):
    config = tiny_config(data_dir)
    assert tokenizer.vocab_size == 512
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2, 3)
    tokenizer.check_against(config)
    assert tokenizer.decode([tokenizer.bos_id, *tokenizer.encode("x = 1"),
                             tokenizer.eos_id, tokenizer.pad_id]) == "x = 1"


def test_vocab_size_mismatch_names_the_field_and_the_fix(tokenizer, data_dir):
    config = tiny_config(data_dir)
    config.model.vocab_size = 520
    config.model.vocab_multiple = 8
    with pytest.raises(tokenizer_lib.TokenizerMismatchError,
                       match=r"model\.vocab_size = 520 .* has 512 pieces.*vocab_size=512"):
        tokenizer.check_against(config)


def test_special_id_mismatch_names_the_field(tokenizer, data_dir):
    config = tiny_config(data_dir)
    config.tokenizer.bos_id = 5
    with pytest.raises(ConfigError, match=r"tokenizer\.bos_id = 5 .* uses 1.*bos_id=1"):
        tokenizer.check_against(config)


def test_ensure_tokenizer_reuses_the_cached_model(tokenizer, data_dir):
    mtime = os.stat(tokenizer.path).st_mtime_ns
    again = tokenizer_files.ensure_tokenizer(tiny_config(data_dir))
    assert again.path == tokenizer.path
    assert os.stat(again.path).st_mtime_ns == mtime
    assert tokenizer.path.startswith(data_dir)


def test_ensure_tokenizer_loads_an_explicit_path(tokenizer, data_dir):
    config = tiny_config(data_dir)
    config.tokenizer.path = tokenizer.path
    assert tokenizer_files.ensure_tokenizer(config).encode("abc") == tokenizer.encode("abc")
    config.tokenizer.path = os.path.join(data_dir, "missing.model")
    with pytest.raises(ConfigError, match=r"tokenizer\.path = .*missing\.model.*no such file"):
        tokenizer_files.ensure_tokenizer(config)


def test_training_is_deterministic(tmp_path):
    texts = [open(os.path.join(STDLIB, name), encoding="utf-8").read()
             for name in ("textwrap.py", "fnmatch.py", "json/decoder.py", "json/encoder.py")]
    paths = [tokenizer_lib.train_sentencepiece(texts, vocab_size=400,
                                               output_path=str(tmp_path / f"m{i}.model"))
             for i in range(2)]
    assert open(paths[0], "rb").read() == open(paths[1], "rb").read()


def test_too_large_vocab_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.vocab_size = 4096"):
        tokenizer_lib.train_sentencepiece(["tiny text\n"] * 3, vocab_size=4096,
                                          output_path=str(tmp_path / "x.model"))


def test_pickles_by_path(tokenizer):
    state = pickle.dumps(tokenizer)
    assert len(state) < 1000
    assert pickle.loads(state).encode("for i in x:\n") == tokenizer.encode("for i in x:\n")


def test_cli_trains_and_encodes(tmp_path):
    (tmp_path / "a.txt").write_text("def hello(name):\n    return 'hi ' + name\n" * 40)
    (tmp_path / "b.jsonl").write_text(
        '{"body": "print(1)\\n\\tindented\\n"}\n{"body": "naïve text ok"}\n' * 40)
    model = tmp_path / "out" / "spm.model"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    train = subprocess.run(
        [sys.executable, "-m", "fmjax.tokenizer", "train", f"--input={tmp_path}/*.txt,"
         f"{tmp_path}/b.jsonl", "--text_field=body", "--vocab_size=320", f"--output={model}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert train.returncode == 0, train.stderr
    assert "320 pieces" in train.stdout
    cli_tokenizer = tokenizer_lib.Tokenizer(str(model))
    assert cli_tokenizer.decode(cli_tokenizer.encode("\tnaïve  x\n")) == "\tnaïve  x\n"
    encode = subprocess.run(
        [sys.executable, "-m", "fmjax.tokenizer", "encode", f"--model={model}", "--text=def x"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert encode.returncode == 0, encode.stderr
    ids = [int(i) for i in encode.stdout.splitlines()[0].split()]
    assert ids == cli_tokenizer.encode("def x")
