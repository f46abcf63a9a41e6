"""TFDS catalog datasets as fmjax reads them: finding a builder by name, making sure its
array_record files are there, and choosing the split to read.

  catalog_builder(name, data_dir)      -> the builder, or None if TFDS knows no such dataset
  prepare_or_explain(builder, ...)     -> builds it in place (small datasets without downloads
                                          that need TensorFlow); ConfigError saying how otherwise
  require_prepared(builder, ...)       -> ConfigError with the `tfds build` command when the
                                          array_record files are not in data_dir
  resolve_split(name, split, ...)      -> the TFDS split read as fmjax's 'train' / 'validation'

`data_dir` may be local or remote (`gs://...`): TFDS opens it with etils epath, so it is passed
through as given.
"""
from __future__ import annotations

import importlib

import tensorflow_datasets as tfds

from fmjax.config import ConfigError
from fmjax.data import hash_split
from fmjax.data.text_source import prepare

# tfds imports its legacy (pre-`datasets/`) builders, glue, c4 and wiki40b among them, in one
# loop that stops at the first module failing to import (nearest_neighbors needs h5py), so
# without h5py `tfds.builder('glue/sst2')` is "not found". Importing them one by one registers
# the rest.
TFDS_LEGACY_MODULES = (
    "audio", "graphs", "image", "image_classification", "object_detection",
    "nearest_neighbors", "question_answering", "d4rl", "ranking", "recommendation",
    "rl_unplugged", "rlds.datasets", "robotics", "robomimic", "structured", "summarization",
    "text", "text_simplification", "time_series", "translate", "video", "vision_language")


def import_tfds_legacy_builders() -> None:
    for module in TFDS_LEGACY_MODULES:
        try:
            importlib.import_module(f"tensorflow_datasets.{module}")
        except ImportError:  # an optional dependency of that module's datasets is missing
            pass


def catalog_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder | None:
    """`tfds.builder(name)` reading array_record under `data_dir`; None for an unknown name."""
    for attempt in range(2):
        try:
            return tfds.builder(name, data_dir=data_dir, file_format="array_record")
        except tfds.core.registered.DatasetNotFoundError:
            if attempt == 0:
                import_tfds_legacy_builders()
    return None


def build_command(name: str, data_dir: str) -> str:
    return f"tfds build {name} --file_format=array_record --data_dir={data_dir}"


def prepare_or_explain(builder: tfds.core.DatasetBuilder, name: str,
                       data_dir: str) -> tfds.core.DatasetBuilder:
    """`prepare(builder)`; a build that needs TensorFlow is a ConfigError saying what to do.

    TFDS 4.9.10 still extracts and iterates downloaded archives (zip, tar) through
    `tf.io.gfile` (tensorflow/datasets#11058), so glue/*, imdb_reviews and most catalog text
    datasets cannot be BUILT without TensorFlow, though reading their array_record files can.
    """
    try:
        return prepare(builder)
    except Exception as e:  # noqa: BLE001 (re-raised unless TensorFlow is what is missing)
        if not missing_tensorflow(e):
            raise
        raise ConfigError(
            f"config.data.source = {name!r}: building {builder.info.full_name} needs "
            "TensorFlow (TFDS reads downloaded archives with tf.io.gfile, "
            "tensorflow/datasets#11058), which fmjax does not depend on; build it once where "
            f"TensorFlow is installed: `{build_command(name, data_dir)}` (reading it back "
            "needs no TensorFlow), or set --config.data.source=stdlib_functions") from e


def missing_tensorflow(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, ModuleNotFoundError) and error.name == "tensorflow":
            return True
        error = error.__cause__ or error.__context__
    return False


def require_prepared(builder: tfds.core.DatasetBuilder, name: str, data_dir: str,
                     how: str = "") -> tfds.core.DatasetBuilder:
    """The builder if its files are in `data_dir`; else a ConfigError with the build command
    (large catalog datasets are never downloaded behind the user's back)."""
    if builder.is_prepared():
        return builder
    found = prepared_versions(builder)
    other = (f" ({data_dir} holds version(s) {', '.join(found)}: set "
             f"--config.data.source={name.split(':')[0]}:{found[-1]})") if found else ""
    raise ConfigError(
        f"config.data.source = {name!r}: {builder.info.full_name} is not prepared in "
        f"config.data.tfds_data_dir = {data_dir!r}{other}; build it once where TensorFlow is "
        f"installed: `{build_command(name, data_dir)}`{'; ' + how if how else ''} (README, "
        "Data), or point --config.data.tfds_data_dir at a directory that holds it")


def prepared_versions(builder: tfds.core.DatasetBuilder) -> list[str]:
    """Versions of this dataset (config) that have files in its data dir, oldest first."""
    try:
        parent = builder.data_path.parent
        names = [p.name for p in parent.iterdir()] if parent.exists() else []
    except Exception:  # noqa: BLE001 (a remote dir we cannot list: say nothing)
        return []
    versions = [n for n in names if tfds.core.Version.is_valid(n)]
    return sorted(versions, key=tfds.core.Version)


def resolve_split(name: str, split: str, available: list[str], *,
                  validation_split: str = "") -> str:
    """fmjax's 'train' is TFDS 'train'; 'validation' is `validation_split` when given, else
    'validation', else 'test' (for datasets without a validation split)."""
    if split == hash_split.VALIDATION and validation_split:
        if validation_split not in available:
            raise ConfigError(
                f"config.data.validation_split = {validation_split!r}: {name} has splits "
                f"{available}; set --config.data.validation_split to one of them")
        return validation_split
    candidates = [split] + (["test"] if split == hash_split.VALIDATION else [])
    for candidate in candidates:
        if candidate in available:
            return candidate
    raise ConfigError(f"config.data.source = {name!r} has splits {available}, none of "
                      f"{candidates}; set --config.data.validation_split to one of them, or "
                      "--config.data.source to a dataset with train and validation (or test) "
                      "splits")
