"""Hugging Face `tokenizers` (the Rust library) reading a tokenizer.json: the tokenizers of
imported models that are not SentencePiece (GPT-2's byte-level BPE, BERT's WordPiece, Llama 3's
tiktoken-style BPE).

tokenizer.json does not say which token is bos or eos, so the special ids come from
config.tokenizer (fmjax.convert import sets them from the HF directory's tokenizer_config.json,
special_tokens_map.json and config.json). `encode` adds no special tokens; `prefix_ids` are the
ids the tokenizer's own post-processor puts before a text (Llama's bos; none for GPT-2; BERT's
[CLS]), which is what transformers' `tokenizer.encode(text)` and lm-evaluation-harness add.
"""
from __future__ import annotations

import json
import os

import numpy as np

from fmjax.config import ConfigError

SPECIAL_IDS = ("pad_id", "bos_id", "eos_id", "unk_id")
# tokenizer_config.json / special_tokens_map.json key of each config.tokenizer id
HF_TOKEN_KEYS = {"pad_id": "pad_token", "bos_id": "bos_token", "eos_id": "eos_token",
                 "unk_id": "unk_token", "mask_id": "mask_token"}


def is_tokenizer_json(head: bytes) -> bool:
    """Whether a tokenizer file's first bytes are a tokenizer.json (a JSON object)."""
    return head.lstrip()[:1] == b"{"


class HFTokenizer:
    """A tokenizer.json with its special ids; pickles as its path and ids (grain workers)."""

    def __init__(self, path: str, *, pad_id: int = -1, bos_id: int = -1, eos_id: int = -1,
                 unk_id: int = -1):
        import tokenizers
        self.path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"no tokenizer.json at {self.path}")
        self._tok = tokenizers.Tokenizer.from_file(self.path)
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = pad_id, bos_id, eos_id, unk_id
        probe = self._tok.encode("a", add_special_tokens=False).ids
        full = self._tok.encode("a", add_special_tokens=True).ids
        start = next((i for i in range(len(full)) if full[i:i + len(probe)] == probe), 0)
        self.prefix_ids = tuple(full[:start])

    @classmethod
    def from_config(cls, path: str, config) -> "HFTokenizer":
        t = config.tokenizer
        return cls(path, **{name: t[name] for name in SPECIAL_IDS})

    def __getstate__(self):
        return {"path": self.path, "ids": {name: getattr(self, name) for name in SPECIAL_IDS}}

    def __setstate__(self, state):
        self.__init__(state["path"], **state["ids"])

    def __repr__(self) -> str:
        return f"HFTokenizer({self.path!r}, vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        """Text of `ids`; special tokens are dropped."""
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                skip_special_tokens=True)

    def piece(self, token_id: int) -> str:
        return self._tok.id_to_token(int(token_id)) or ""

    def token_id(self, token: str) -> int:
        """The id of `token` (a special token's text), or -1."""
        found = self._tok.token_to_id(token)
        return -1 if found is None else found

    def check_against(self, config) -> None:
        """Raises ConfigError when the model's embedding table cannot hold the tokenizer's ids
        or a configured special id is outside them."""
        rows = config.model.vocab_size
        if self.vocab_size > rows:
            raise ConfigError(
                f"config.model.vocab_size = {rows} but the tokenizer {self.path} has "
                f"{self.vocab_size} tokens; use the model's own tokenizer.json, or set "
                f"--config.model.vocab_size={self.vocab_size}")
        for name in SPECIAL_IDS + ("mask_id",):
            value = config.tokenizer[name]
            if value >= self.vocab_size:
                raise ConfigError(
                    f"config.tokenizer.{name} = {value} but the tokenizer {self.path} has "
                    f"{self.vocab_size} tokens; set --config.tokenizer.{name} to its id "
                    "(-1 for none)")


def special_ids(tokenizer_json: bytes, hf_files: dict[str, dict], hf_config: dict
                ) -> dict[str, int]:
    """config.tokenizer's special ids for a HF directory: each token named in its
    tokenizer_config.json or special_tokens_map.json (`hf_files`, first wins), looked up in the
    tokenizer.json; else config.json's `*_token_id`; else -1."""
    import tokenizers
    tok = tokenizers.Tokenizer.from_str(tokenizer_json.decode("utf-8"))
    out = {}
    for name, key in HF_TOKEN_KEYS.items():
        token = next((f[key] for f in hf_files.values() if f.get(key)), None)
        if isinstance(token, dict):  # {"content": "<s>", "lstrip": ...}
            token = token.get("content")
        found = tok.token_to_id(token) if isinstance(token, str) else None
        if found is None:
            value = hf_config.get(f"{key}_id")
            found = (value[0] if value else None) if isinstance(value, list) else value
        out[name] = -1 if found is None else int(found)
    return out


def token_names(tokenizer_json: bytes, ids: dict[str, int]) -> dict[str, str]:
    """{tokenizer_config.json key: token text} of the special ids that are set (for export)."""
    import tokenizers
    tok = tokenizers.Tokenizer.from_str(tokenizer_json.decode("utf-8"))
    return {HF_TOKEN_KEYS[name]: tok.id_to_token(value) for name, value in ids.items()
            if value >= 0 and tok.id_to_token(value) is not None}


def read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)
