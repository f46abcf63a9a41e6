"""SentencePiece tokenizers that round-trip source code exactly: training, loading, caching.

Training settings keep every character: identity normalization, no whitespace folding, no dummy
prefix, pieces may span whitespace and newlines (documents are fed as multi-line chunks, so
pieces such as '):\\n' and '\\n▁▁▁▁' are learned), and any character outside the vocabulary
falls back to its UTF-8 bytes. SentencePiece writes spaces as '▁' (U+2581) inside pieces, so a
literal '▁' in the input would decode as a space; `Tokenizer.encode` emits it as byte pieces.

Cost on 2 CPU cores (stdlib corpus, vocab 4096): BPE trains on 8M characters in about 3 s;
unigram with these whitespace-spanning settings needs about 3 minutes for the same text.
Byte fallback takes 256 ids and every frequent character one more, so vocabularies below ~400
do not fit source code.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
from typing import Iterable, Iterator

import numpy as np
import sentencepiece as spm

from fmjax.config import ConfigError
from fmjax.data import mixture
from fmjax.data.sources import get_source
from fmjax.data.text_source import local_cache_dir

# Bump when the training recipe changes, so cached tokenizers are retrained.
RECIPE_VERSION = 1
# Documents are cut into multi-line training "sentences" of at most this many characters;
# SentencePiece skips sentences longer than `max_sentence_length` bytes (4 per char at worst).
CHUNK_CHARS = 2048
SPACE_MARK = "\u2581"  # '▁', SentencePiece's in-piece spelling of a space.
SPECIAL_IDS = ("pad_id", "bos_id", "eos_id", "unk_id")
# Sources with more documents than this (c4/en: 365M) are sampled from their stored order, which
# TFDS writes hashed, i.e. shuffled: a permutation of all indices would take GBs of memory.
LARGE_SOURCE = 1 << 22
MODEL_TYPES = ("bpe", "unigram")


class TokenizerMismatchError(ConfigError):
    """The tokenizer's vocabulary size or special ids disagree with the config."""


def training_chunks(texts: Iterable[str], max_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """Whole lines grouped into chunks of at most `max_chars`; longer lines are cut."""
    for text in texts:
        chunk = ""
        for line in text.splitlines(keepends=True):
            if len(chunk) + len(line) > max_chars and chunk:
                yield chunk
                chunk = ""
            while len(line) > max_chars:
                yield line[:max_chars]
                line = line[max_chars:]
            chunk += line
        if chunk:
            yield chunk


def train_sentencepiece(texts: Iterable[str], *, vocab_size: int, output_path: str,
                        model_type: str = "bpe", pad_id: int = 0, bos_id: int = 1,
                        eos_id: int = 2, unk_id: int = 3, num_threads: int = 2) -> str:
    """Trains on all of `texts` and writes `output_path` (.model) atomically; returns the path.

    Deterministic: the same texts and arguments give a byte-identical model file.
    """
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"config.tokenizer.model_type = {model_type!r}: unknown; use one of "
                          f"{', '.join(MODEL_TYPES)}")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=training_chunks(texts), model_writer=model,
            vocab_size=vocab_size, model_type=model_type,
            pad_id=pad_id, bos_id=bos_id, eos_id=eos_id, unk_id=unk_id,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=False, split_by_whitespace=False,
            allow_whitespace_only_pieces=True, byte_fallback=True,
            max_sentence_length=4 * CHUNK_CHARS, input_sentence_size=0,
            num_threads=num_threads, minloglevel=2)
    except RuntimeError as e:
        if "Vocabulary size" not in str(e):
            raise
        raise ConfigError(
            f"model.vocab_size = {vocab_size} does not fit the training text: "
            f"{str(e).split('] ')[-1]} Set --config.model.vocab_size (tokenizer CLI: "
            "--vocab_size) accordingly, or give more text") from None
    output_path = os.path.abspath(os.path.expanduser(output_path))
    os.makedirs(os.path.dirname(output_path), exist_ok=True)
    tmp_path = f"{output_path}.tmp{os.getpid()}"
    with open(tmp_path, "wb") as f:
        f.write(model.getvalue())
    os.replace(tmp_path, output_path)
    return output_path


class Tokenizer:
    """A SentencePiece model; pickles as its path, so grain workers reload it from disk."""

    def __init__(self, path: str):
        self.path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"no SentencePiece model at {self.path}")
        self._sp = spm.SentencePieceProcessor(model_file=self.path)
        self._space_mark_ids = [self._sp.piece_to_id(f"<0x{b:02X}>")
                                for b in SPACE_MARK.encode("utf-8")]

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def __repr__(self) -> str:
        return f"Tokenizer({self.path!r}, vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return self._sp.pad_id()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def prefix_ids(self) -> tuple[int, ...]:
        """Ids that start every document fmjax trains on: bos, if the model has one."""
        return (self.bos_id,) if self.bos_id >= 0 else ()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without bos/eos; `decode(encode(text)) == text` exactly."""
        if SPACE_MARK not in text:
            return self._sp.encode(text)
        ids = []
        for i, part in enumerate(text.split(SPACE_MARK)):
            ids += (self._space_mark_ids if i else []) + self._sp.encode(part)
        return ids

    def decode(self, ids) -> str:
        """Text of `ids`; pad/bos/eos ids are dropped."""
        return self._sp.decode([int(i) for i in np.asarray(ids).reshape(-1)])

    def piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def check_against(self, config) -> None:
        """Raises TokenizerMismatchError naming the config field that disagrees, and the fix.
        The model's vocabulary is the tokenizer's pieces plus `tokenizer.extra_ids` ids after
        them ([MASK], sentinels), so pieces must equal model.vocab_size - tokenizer.extra_ids."""
        extra = config.tokenizer.extra_ids
        if self.vocab_size != pieces_for(config):
            raise TokenizerMismatchError(
                f"config.model.vocab_size = {config.model.vocab_size} with "
                f"config.tokenizer.extra_ids = {extra} expects {pieces_for(config)} pieces but "
                f"the tokenizer {self.path} has {self.vocab_size} pieces; set "
                f"--config.model.vocab_size={self.vocab_size + extra} (to pad the embedding "
                "table for speed, use --config.model.vocab_multiple, not a larger vocab_size)")
        for name in SPECIAL_IDS:
            expected, actual = config.tokenizer[name], getattr(self, name)
            if expected != actual:
                raise TokenizerMismatchError(
                    f"config.tokenizer.{name} = {expected} but the tokenizer {self.path} uses "
                    f"{actual}; set --config.tokenizer.{name}={actual}")


def limit_chars(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """Whole texts, in order, until at least `max_chars` characters were given."""
    total = 0
    for text in texts:
        if total >= max_chars:
            return
        total += len(text)
        yield text


def sample_texts(source, max_chars: int) -> Iterator[str]:
    """Whole documents of `source` in a fixed pseudo-random order until `max_chars` is reached
    (above LARGE_SOURCE documents: in stored order, which TFDS shuffled when writing)."""
    n = len(source)
    order = range(n) if n > LARGE_SOURCE else np.random.default_rng(0).permutation(n)
    return limit_chars((source[int(i)]["text"] for i in order), max_chars)


def training_sources(config) -> list[tuple[float, object]]:
    """(share of the tokenizer's training text, train source): the source, or each component of
    a mixture with its weight's share."""
    if not config.data.mixture:
        return [(1.0, get_source(config, "train"))]
    opened = mixture.open_components(config, "train", get_source)
    shares = mixture.shares([component for component, _ in opened])
    return [(shares[component.name], source) for component, source in opened]


def pieces_for(config) -> int:
    """SentencePiece pieces of the config's tokenizer: model.vocab_size - tokenizer.extra_ids
    (the extra ids, e.g. [MASK] and T5 sentinels, sit after the pieces)."""
    extra = config.tokenizer.extra_ids
    if not 0 <= extra < config.model.vocab_size:
        raise ConfigError(
            f"config.tokenizer.extra_ids = {extra}: must be >= 0 and below model.vocab_size = "
            f"{config.model.vocab_size}; set --config.tokenizer.extra_ids (0 unless the "
            "objective needs ids outside the tokenizer: mlm 1, span_corruption its span count)")
    return config.model.vocab_size - extra


def tokenizer_cache_path(config, source_identity: str) -> str:
    t = config.tokenizer
    pieces = pieces_for(config)
    key = json.dumps([RECIPE_VERSION, source_identity, pieces, t.model_type,
                      t.train_chars, [t[name] for name in SPECIAL_IDS]])
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return os.path.join(local_cache_dir(config.data), "fmjax_tokenizers", f"spm-{t.model_type}-"
                        f"{pieces}-{digest}.model")


def trained_tokenizer(config) -> Tokenizer:
    """A tokenizer with model.vocab_size - tokenizer.extra_ids pieces trained on the source's
    train split (a mixture: each component's, in proportion to its weight), cached."""
    t = config.tokenizer
    parts = training_sources(config)
    if config.data.mixture:
        identity = " + ".join(f"{share:.6f} {source.identity}" for share, source in parts)
    else:
        identity = parts[0][1].identity
    path = tokenizer_cache_path(config, identity)
    if not os.path.isfile(path):
        texts = itertools.chain.from_iterable(
            sample_texts(source, int(share * t.train_chars)) for share, source in parts)
        train_sentencepiece(texts, vocab_size=pieces_for(config), output_path=path,
                            model_type=t.model_type, pad_id=t.pad_id, bos_id=t.bos_id,
                            eos_id=t.eos_id, unk_id=t.unk_id)
    return Tokenizer(path)
