"""`TextSource`: random access to documents as {'text': str}, the one thing the pipeline reads.

Also what every TFDS-backed source needs: where the array_record cache lives (`tfds_data_dir`,
local or `gs://`; files fmjax writes itself, such as tokenizers, go to `local_cache_dir`),
building a builder into it once (`prepare`), and opening one split of an fmjax builder
(`open_split`).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import tensorflow_datasets as tfds

from fmjax.config import ConfigError

DEFAULT_LOCAL_CACHE = os.path.join("~", ".cache", "fmjax", "tfds")


class TextSource:
    """Wraps a TFDS array_record data source; `identity` names the data (for cache keys).

    `clean` (a module-level function, so it pickles) turns the stored text into the text a
    reader expects (e.g. wiki40b's markers into newlines); None keeps it as stored.
    Implements grain's RandomAccessDataSource protocol (`__len__`, `__getitem__`) and pickles
    with its underlying source, so grain worker processes can read it.
    """

    def __init__(self, records: Sequence[dict[str, Any]], *, text_key: str, identity: str,
                 clean: Callable[[str], str] | None = None):
        self.records = records
        self.text_key = text_key
        self.identity = identity
        self.clean = clean

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, str]:
        record = self.records[index]
        if self.text_key not in record:
            raise KeyError(f"{self.identity} has no feature {self.text_key!r} (it has: "
                           f"{', '.join(record)}); set --config.data.text_field to one of them")
        text = as_text(record[self.text_key])
        return {"text": self.clean(text) if self.clean else text}

    def __repr__(self) -> str:
        return f"TextSource({self.identity}, {len(self)} documents)"


def as_text(value) -> str:
    """TFDS returns Text features as bytes (sometimes numpy bytes); decode them as UTF-8."""
    if isinstance(value, str):
        return value
    return bytes(value).decode("utf-8", errors="replace")


def is_remote(path: str) -> bool:
    """A URL such as gs://bucket/dir (read by TFDS through etils epath), not a local path."""
    return "://" in path


def tfds_data_dir(data_config) -> str:
    """`config.data.tfds_data_dir` with `~` expanded; a remote URL (gs://...) is kept as is."""
    path = data_config.tfds_data_dir
    return path if is_remote(path) else os.path.expanduser(path)


def local_cache_dir(data_config) -> str:
    """Where fmjax writes its own cached files (tokenizers): the TFDS data dir when it is
    local, else the default local cache (those files are opened with plain `open`)."""
    path = tfds_data_dir(data_config)
    return os.path.expanduser(DEFAULT_LOCAL_CACHE) if is_remote(path) else path


def prepare(builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
    """Writes the builder's array_record files once; later calls only read its metadata."""
    if not builder.is_prepared():
        tfds.display_progress_bar(False)
        builder.download_and_prepare(file_format="array_record")
    return builder


def open_split(builder: tfds.core.DatasetBuilder, split: str) -> TextSource:
    """The `text` feature of a prepared fmjax builder's split (empty splits are not written)."""
    if split not in builder.info.splits:
        percent = builder.builder_config.validation_percent
        raise ConfigError(
            f"config.data.validation_percent = {percent}: {builder.info.full_name} has no "
            f"{split!r} documents (that percent is held out by path hash); raise "
            "--config.data.validation_percent or add documents")
    return TextSource(builder.as_data_source(split=split), text_key="text",
                      identity=f"{builder.info.full_name}:{split}")


def text_dataset_info(builder: tfds.core.DatasetBuilder, description: str,
                      **kwargs) -> tfds.core.DatasetInfo:
    """DatasetInfo of the fmjax text builders: each example is a document `text` and its `path`."""
    return tfds.core.DatasetInfo(
        builder=builder, description=description,
        features=tfds.features.FeaturesDict({"text": tfds.features.Text(),
                                             "path": tfds.features.Text()}),
        **kwargs)
