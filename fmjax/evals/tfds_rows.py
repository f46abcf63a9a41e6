"""Benchmark rows read through TFDS, the data layer pretraining uses (fmjax/data/tfds_builders),
for users who keep the catalog's copies, e.g. in GCS: `--tasks=tfds:arc_easy` scores the
registered task `arc_easy` on TFDS's ai2_arc/ARC-Easy instead of the wheel's copy.

A task offers this by naming its TFDS twin (`Task.tfds_name`, whose features have the wheel's
field names) and splitting its loader in two (`Task.from_rows`). Rows are read from the
array_record files with `tfds.data_source`, under TFDS's own data directory: `TFDS_DATA_DIR`
(e.g. gs://bucket/tensorflow_datasets), else ~/tensorflow_datasets. Nothing is downloaded: a
dataset that is not prepared there is an error with its build command.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from fmjax.config import ConfigError
from fmjax.evals.task_spec import Task

PREFIX = "tfds:"
DEFAULT_DATA_DIR = "~/tensorflow_datasets"  # TFDS's own default


def data_dir() -> str:
    path = os.environ.get("TFDS_DATA_DIR") or DEFAULT_DATA_DIR
    return path if "://" in path else os.path.expanduser(path)


def plain(value):
    """A TFDS value as the wheel's rows hold it: text as str, sequences as lists, numbers as
    Python numbers, nested dicts alike."""
    if isinstance(value, dict):
        return {key: plain(v) for key, v in value.items()}
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()] if value.dtype == object else value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def read(name: str, split: str, directory: str, task: str) -> list[dict]:
    """Every row of TFDS dataset `name`'s `split`, in stored order, as plain values."""
    from fmjax.data import tfds_builders
    builder = tfds_builders.catalog_builder(name, directory)
    if builder is None:
        raise ConfigError(f"eval task {PREFIX}{task}: {name!r} is not a TFDS dataset this "
                          "tensorflow-datasets knows")
    if not builder.is_prepared():
        raise ConfigError(
            f"eval task {PREFIX}{task}: {builder.info.full_name} is not prepared in "
            f"{directory}; build it once (`{tfds_builders.build_command(name, directory)}`), "
            "or set TFDS_DATA_DIR to the directory that holds it (gs://... works)")
    if split not in builder.info.splits:
        raise ConfigError(f"eval task {PREFIX}{task}: {name} has splits "
                          f"{sorted(builder.info.splits)}, not {split!r}")
    source = builder.as_data_source(split=split)
    return [plain(source[i]) for i in range(len(source))]


def task(registered: Task) -> Task:
    """`registered` with its rows read from its TFDS twin, named tfds:NAME."""
    if not registered.tfds_name or registered.from_rows is None:
        raise ConfigError(f"eval task {PREFIX}{registered.name}: {registered.name} names no TFDS "
                          f"dataset (Task.tfds_name); use {registered.name!r} (the shipped "
                          "data)")
    directory = data_dir()

    def load(split: str) -> list:
        return registered.from_rows(read(registered.tfds_name, split, directory,
                                         registered.name))
    return dataclasses.replace(registered, name=PREFIX + registered.name, load=load)
