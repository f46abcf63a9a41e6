"""`get_source(config, split)`: the documents of `config.data.source` as a `TextSource`.

Sources are looked up in `SOURCES` by name; a new one registers itself with `@register_source`
in its own module. Any name not registered is read as a TFDS dataset in array_record form
(`tfds.data_source`), taking the text from the feature named by `config.data.text_field`.
"""
from __future__ import annotations

from typing import Callable

import tensorflow_datasets as tfds

from fmjax.config import ConfigError
from fmjax.data import hash_split, local_text, stdlib_corpus
from fmjax.data.text_source import TextSource, prepare, tfds_data_dir

OpenFn = Callable[..., TextSource]  # (config, split) -> TextSource

SOURCES: dict[str, OpenFn] = {
    "stdlib": stdlib_corpus.open_stdlib,
    "local_text": local_text.open_local_text,
}

SPLITS = (hash_split.TRAIN, hash_split.VALIDATION)


def register_source(name: str) -> Callable[[OpenFn], OpenFn]:
    """Decorator: `@register_source("mine") def open_mine(config, split) -> TextSource`."""
    def add(fn: OpenFn) -> OpenFn:
        if name in SOURCES and SOURCES[name] is not fn:
            raise ValueError(f"data source {name!r} is already registered")
        SOURCES[name] = fn
        return fn
    return add


def get_source(config, split: str) -> TextSource:
    """Random access to `split` ('train' or 'validation') of `config.data.source`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    open_fn = SOURCES.get(config.data.source, open_tfds)
    return open_fn(config, split)


def open_tfds(config, split: str) -> TextSource:
    """A TFDS dataset by name; 'validation' falls back to 'test' when the dataset has none."""
    name, data_dir = config.data.source, tfds_data_dir(config)
    try:
        builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError:
        raise ConfigError(
            f"config.data.source = {name!r}: neither a registered fmjax source "
            f"({', '.join(sorted(SOURCES))}) nor a known TFDS dataset; set "
            "--config.data.source to one of those or to a TFDS name such as tiny_shakespeare"
        ) from None
    prepare(builder)
    tfds_split = resolve_split(name, split, list(builder.info.splits))
    records = tfds.data_source(name, split=tfds_split, data_dir=data_dir, download=False)
    return TextSource(records, text_key=config.data.text_field,
                      identity=f"{builder.info.full_name}:{tfds_split}")


def resolve_split(name: str, split: str, available: list[str]) -> str:
    candidates = [split] + (["test"] if split == hash_split.VALIDATION else [])
    for candidate in candidates:
        if candidate in available:
            return candidate
    raise ConfigError(f"config.data.source = {name!r} has splits {available}, none of "
                      f"{candidates}; set --config.data.source to a dataset with train and "
                      "validation (or test) splits")
