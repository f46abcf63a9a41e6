"""The tokenizer seam: a tokenizer file becomes a tokenizer by its kind, read from its bytes.

Every tokenizer offers vocab_size, pad_id, bos_id, eos_id, unk_id, prefix_ids (what starts a
document), encode (no special tokens), decode, piece and check_against(config). The kinds:
  sentencepiece  a SentencePiece .model (fmjax trains these; Llama 2's tokenizer.model, T5's
                 spiece.model); special ids are the model's own (fmjax/data/sp_tokenizer.py)
  hf_tokenizers  a Hugging Face tokenizer.json (GPT-2, BERT, Llama 3); special ids come from
                 config.tokenizer (fmjax/data/hf_tokenizer.py)
A run directory and a checkpoint keep the file's bytes as they are, whatever its kind, so a
reader needs nothing but the file. A new kind is one `register(Kind(...))`, ahead of the
SentencePiece fallback.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

from fmjax.config import ConfigError
from fmjax.data import hf_tokenizer, sp_tokenizer

HEAD_BYTES = 64  # bytes a kind is recognised from


@dataclasses.dataclass(frozen=True)
class Kind:
    name: str
    recognises: Callable[[bytes], bool]  # the file's first HEAD_BYTES -> is it this kind
    open: Callable[[str, object], object]  # (path, config) -> tokenizer


KINDS: list[Kind] = [Kind("hf_tokenizers", hf_tokenizer.is_tokenizer_json,
                          hf_tokenizer.HFTokenizer.from_config)]
FALLBACK = Kind("sentencepiece", lambda head: True, lambda path, config: sp_tokenizer.Tokenizer(path))


def register(kind: Kind) -> Kind:
    KINDS.append(kind)
    return kind


def kind_of(head: bytes) -> Kind:
    return next((k for k in KINDS if k.recognises(head)), FALLBACK)


def open_tokenizer(path: str, config):
    """The tokenizer in file `path`, whatever its kind (special ids of a tokenizer.json from
    config.tokenizer)."""
    with open(os.path.expanduser(path), "rb") as f:
        head = f.read(HEAD_BYTES)
    return kind_of(head).open(path, config)


def ensure_tokenizer(config):
    """The tokenizer at `config.tokenizer.path` (a SentencePiece .model or a tokenizer.json);
    with no path, a SentencePiece model trained on the corpus once and cached."""
    t = config.tokenizer
    if not t.path:
        return sp_tokenizer.trained_tokenizer(config)
    if not os.path.isfile(os.path.expanduser(t.path)):
        raise ConfigError(
            f"config.tokenizer.path = {t.path!r}: no such file; point it at a SentencePiece "
            ".model (python -m fmjax.tokenizer train makes one) or a Hugging Face "
            "tokenizer.json, or set --config.tokenizer.path='' to train one on the corpus")
    return open_tokenizer(t.path, config)
