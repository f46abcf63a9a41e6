"""`get_source(config, split)`: the documents of `config.data.source` as a `TextSource`.

Sources are looked up in `SOURCES` by name; a new one registers itself with `@register_source`
in its own module (a name NAME is also looked up by importing `fmjax.data.NAME`). Any other
name is a TFDS dataset read in array_record form from `config.data.tfds_data_dir`: the named
pretraining datasets of `fmjax/data/tfds_text.py` (c4/en, lm1b, wiki40b/en, pg19,
tiny_shakespeare) with their own text feature, validation split and cleanup, which must have
been prepared once (`tfds build`, README); any other catalog name with the text under
`config.data.text_field`, built in place when TFDS can.
"""
from __future__ import annotations

from typing import Callable

from fmjax.config import ConfigError
from fmjax.registry import import_if_present
from fmjax.data import hash_split, local_text, stdlib_corpus, tfds_builders, tfds_text
from fmjax.data.text_source import TextSource, tfds_data_dir

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
    open_fn = registered_source(config.data.source) or open_tfds
    return open_fn(config, split)


def registered_source(name: str) -> OpenFn | None:
    """The opener registered as `name`, importing `fmjax.data.<name>` if needed."""
    if name not in SOURCES and name.isidentifier() and name not in tfds_text.NAMED:
        import_if_present(f"fmjax.data.{name}")
    return SOURCES.get(name)


def open_tfds(config, split: str) -> TextSource:
    """A TFDS dataset by name (named ones per `tfds_text.NAMED`, others via data.text_field)."""
    name, data_dir = config.data.source, tfds_data_dir(config.data)
    builder = tfds_builders.catalog_builder(name, data_dir)
    if builder is None:
        raise ConfigError(
            f"config.data.source = {name!r}: neither a registered fmjax source "
            f"({', '.join(sorted(SOURCES))}) nor a known TFDS dataset; set "
            "--config.data.source to one of those or to a TFDS name such as "
            f"{', '.join(tfds_text.NAMED)}")
    spec = tfds_text.spec_for(name, config.data.text_field)
    if tfds_text.base_name(name) in tfds_text.NAMED:  # large: never downloaded implicitly
        tfds_builders.require_prepared(builder, name, data_dir, spec.build_needs)
    else:
        tfds_builders.prepare_or_explain(builder, name, data_dir)
    tfds_split = tfds_builders.resolve_split(
        name, split, list(builder.info.splits),
        validation_split=config.data.validation_split or spec.validation_split)
    source = TextSource(builder.as_data_source(split=tfds_split), text_key=spec.text_feature,
                        identity=f"{builder.info.full_name}:{tfds_split}", clean=spec.clean)
    return split_documents(source, spec.split_documents_on) if spec.split_documents_on else source


def split_documents(source: TextSource, separator: str) -> TextSource:
    """Each text of `source` cut at `separator` into documents (read into memory: for datasets
    that store a whole corpus as one text, which S row streams could not share out)."""
    pieces = [{"text": piece} for i in range(len(source))
              for piece in source[i]["text"].split(separator) if piece.strip()]
    return TextSource(pieces, text_key="text",
                      identity=f"{separator!r}-separated {source.identity}")
