"""A run's directory: the files written before the first step (config.json, the tokenizer)."""
from __future__ import annotations

import os

import jax

from fmjax import config as config_lib
from fmjax.training import checkpoint


def prepare_workdir(config, workdir: str, tokenizer) -> bytes:
    """Writes config.json and the run's tokenizer copy (process 0); returns the tokenizer bytes."""
    os.makedirs(workdir, exist_ok=True)
    with open(tokenizer.path, "rb") as f:
        tokenizer_bytes = f.read()
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config_lib.to_json(config))
        if os.path.abspath(tokenizer.path) != checkpoint.tokenizer_path(workdir):
            with open(checkpoint.tokenizer_path(workdir), "wb") as f:
                f.write(tokenizer_bytes)
    return tokenizer_bytes
