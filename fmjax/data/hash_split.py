"""Train/validation membership of a document as a pure function of its key.

A document's split depends only on a stable hash of its key (a relative path, or path:line for
.jsonl), so adding or removing other documents never moves it across the boundary.
"""
from __future__ import annotations

import hashlib

from fmjax.config import ConfigError

TRAIN = "train"
VALIDATION = "validation"


def split_for_key(key: str, validation_percent: int) -> str:
    """'validation' for about `validation_percent`% of keys, else 'train' (sha1 bucket of 100)."""
    bucket = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") % 100
    return VALIDATION if bucket < validation_percent else TRAIN


def check_validation_percent(validation_percent) -> int:
    if not isinstance(validation_percent, int) or not 0 <= validation_percent < 100:
        raise ConfigError(
            f"config.data.validation_percent = {validation_percent!r}: must be an integer in "
            "[0, 100); set --config.data.validation_percent=5")
    return validation_percent
