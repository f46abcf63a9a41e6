"""The user's own text as a TFDS dataset: `.txt` (one document per file), `.jsonl` (one per line).

`config.data.paths` lists files, globs or directories (comma-separated). The builder config name
is a hash of the resolved paths, their sizes and mtimes, the jsonl text key and the validation
percent, so editing, adding or removing a file builds a fresh cache entry instead of reading a
stale one. Documents are split by a hash of their key: the path relative to the files' common
directory, plus `:line` for .jsonl.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os

import tensorflow_datasets as tfds

from fmjax.config import ConfigError
from fmjax.data import hash_split
from fmjax.data.text_files import iter_documents, resolve_paths
from fmjax.data.text_source import (TextSource, open_split, prepare, tfds_data_dir,
                                     text_dataset_info)


@dataclasses.dataclass(eq=False)
class LocalTextConfig(tfds.core.BuilderConfig):
    files: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    text_field: str = "text"
    validation_percent: int = 5


def local_text_config(paths: str, *, text_field: str, validation_percent: int) -> LocalTextConfig:
    files = tuple(resolve_paths(paths))
    fingerprint = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    digest = hashlib.sha1(json.dumps([fingerprint, text_field, validation_percent]).encode())
    return LocalTextConfig(name=f"files-{digest.hexdigest()[:16]}", files=files,
                           text_field=text_field, validation_percent=validation_percent,
                           description=repr(paths))


def document_key(path: str, root: str, line_number: int | None) -> str:
    rel_path = os.path.relpath(path, root)
    return rel_path if line_number is None else f"{rel_path}:{line_number}"


class FmjaxLocalText(tfds.core.GeneratorBasedBuilder):
    """Local .txt / .jsonl documents."""

    name = "fmjax_local_text"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}

    def _info(self) -> tfds.core.DatasetInfo:
        return text_dataset_info(self, __doc__)

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        counts = collections.Counter(split for split, _, _ in self._documents())
        if not counts[hash_split.TRAIN]:
            raise ConfigError(
                f"config.data.paths = {self.builder_config.description}: no training documents "
                f"(found {counts[hash_split.VALIDATION]} validation, none train, empty ones are "
                "skipped); add text or lower --config.data.validation_percent")
        return {split: self._generate_examples(split)
                for split in (hash_split.TRAIN, hash_split.VALIDATION)
                if counts[split]}  # TFDS rejects empty splits.

    def _documents(self):
        """(split, key, text) of every non-empty document, in file order."""
        cfg = self.builder_config
        root = os.path.commonpath([os.path.dirname(f) for f in cfg.files])
        for path in cfg.files:
            for line_number, text in iter_documents(path, text_field=cfg.text_field):
                if text.strip():
                    key = document_key(path, root, line_number)
                    yield hash_split.split_for_key(key, cfg.validation_percent), key, text

    def _generate_examples(self, split: str):
        for document_split, key, text in self._documents():
            if document_split == split:
                yield key, {"text": text, "path": key}


def local_text_builder(config) -> FmjaxLocalText:
    """The prepared builder for `config.data.paths` (rebuilt whenever the files change)."""
    validation_percent = hash_split.check_validation_percent(config.data.validation_percent)
    builder_config = local_text_config(config.data.paths, text_field=config.data.text_field,
                                       validation_percent=validation_percent)
    builder = FmjaxLocalText(config=builder_config, data_dir=tfds_data_dir(config.data),
                             file_format="array_record")
    return prepare(builder)


def open_local_text(config, split: str) -> TextSource:
    return open_split(local_text_builder(config), split)
