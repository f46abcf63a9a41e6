"""The embedded corpus: the running interpreter's standard library `*.py` files as a TFDS dataset.

About 1,800 files / 31 MB on CPython 3.11; needs no download. Each example is one file:
`text` (its source) and `path` (relative to the stdlib dir). site-packages / dist-packages are
excluded, empty files skipped, and the few files that are not UTF-8 (test fixtures in other
encodings) decoded with U+FFFD replacements. The split is a hash of the relative path. The
builder config name carries the Python version, the validation percent and a hash of the
stdlib dir, so different interpreters or settings never share a cache entry.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import sysconfig

import tensorflow_datasets as tfds

from fmjax.data import hash_split
from fmjax.data.text_files import read_text
from fmjax.data.text_source import (TextSource, open_split, prepare, tfds_data_dir,
                                     text_dataset_info)

EXCLUDED_DIRS = ("site-packages", "dist-packages", "__pycache__")


@dataclasses.dataclass(eq=False)
class StdlibConfig(tfds.core.BuilderConfig):
    stdlib_dir: str = ""
    validation_percent: int = 5


def stdlib_config(validation_percent: int, stdlib_dir: str | None = None) -> StdlibConfig:
    stdlib_dir = stdlib_dir or sysconfig.get_paths()["stdlib"]
    dir_hash = hashlib.sha1(stdlib_dir.encode()).hexdigest()[:8]
    name = f"py{platform.python_version()}-val{validation_percent}-{dir_hash}"
    return StdlibConfig(name=name, stdlib_dir=stdlib_dir, validation_percent=validation_percent,
                        description=f"*.py files under {stdlib_dir}")


def list_stdlib_files(stdlib_dir: str) -> list[str]:
    """Relative paths of every *.py file under `stdlib_dir`, sorted, excluding EXCLUDED_DIRS."""
    rel_paths = []
    for dirpath, dirnames, filenames in os.walk(stdlib_dir):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                rel_paths.append(os.path.relpath(os.path.join(dirpath, name), stdlib_dir))
    return rel_paths


class FmjaxStdlib(tfds.core.GeneratorBasedBuilder):
    """Python standard library source files, one document per file."""

    name = "fmjax_stdlib"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}

    def _info(self) -> tfds.core.DatasetInfo:
        return text_dataset_info(self, __doc__, metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        cfg = self.builder_config
        by_split = {hash_split.TRAIN: [], hash_split.VALIDATION: []}
        for rel_path in list_stdlib_files(cfg.stdlib_dir):
            by_split[hash_split.split_for_key(rel_path, cfg.validation_percent)].append(rel_path)
        self.info.metadata.update(files=0, skipped_empty=0, not_utf8=0)
        return {split: self._generate_examples(rel_paths)
                for split, rel_paths in by_split.items() if rel_paths}  # TFDS rejects empty splits

    def _generate_examples(self, rel_paths):
        counts = self.info.metadata
        for rel_path in rel_paths:
            text, valid_utf8 = read_text(os.path.join(self.builder_config.stdlib_dir, rel_path))
            if not text.strip():
                counts["skipped_empty"] += 1
                continue
            counts["files"] += 1
            counts["not_utf8"] += not valid_utf8
            yield rel_path, {"text": text, "path": rel_path}


def stdlib_builder(config) -> FmjaxStdlib:
    """The prepared builder for this interpreter's stdlib (built on first use, then reused)."""
    validation_percent = hash_split.check_validation_percent(config.data.validation_percent)
    builder = FmjaxStdlib(config=stdlib_config(validation_percent),
                          data_dir=tfds_data_dir(config.data), file_format="array_record")
    return prepare(builder)


def open_stdlib(config, split: str) -> TextSource:
    return open_split(stdlib_builder(config), split)
