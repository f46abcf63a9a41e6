"""The user's text files: comma-separated files / globs / directories -> documents.

Plain files (.txt, .py, .md, ...) are one document each; `.jsonl` files hold one document per
line, its text under a configurable key. Shared by the local_text builder and the tokenizer CLI.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Iterator

from fmjax.config import ConfigError

# Files taken from a directory given as input; explicit files and globs may have any suffix.
TEXT_SUFFIXES = (".txt", ".py", ".md", ".rst", ".jsonl")


def resolve_paths(spec: str, *, flag: str = "--config.data.paths") -> list[str]:
    """Absolute, de-duplicated file paths for `spec` (comma-separated files, globs, dirs)."""
    field = flag.removeprefix("--").removeprefix("config.")
    entries = [e.strip() for e in spec.split(",") if e.strip()]
    if not entries:
        raise ConfigError(f"{field} = {spec!r}: no input files given; set {flag} to "
                          "comma-separated .txt/.jsonl files, globs or directories")
    paths = []
    for entry in entries:
        matches = _expand(os.path.expanduser(entry))
        if not matches:
            raise ConfigError(
                f"{field} = {spec!r}: {entry!r} matches no file (cwd {os.getcwd()}); pass "
                f"existing files, globs or directories, e.g. {flag}=corpus/*.txt,extra.jsonl")
        paths += matches
    return list(dict.fromkeys(os.path.abspath(p) for p in paths))


def _expand(entry: str) -> list[str]:
    if os.path.isdir(entry):
        found = glob.glob(os.path.join(entry, "**", "*"), recursive=True)
        return sorted(p for p in found if os.path.isfile(p) and p.endswith(TEXT_SUFFIXES))
    if glob.has_magic(entry):
        return sorted(p for p in glob.glob(entry, recursive=True) if os.path.isfile(p))
    return [entry] if os.path.isfile(entry) else []


def read_text(path: str) -> tuple[str, bool]:
    """The file's text and whether it was valid UTF-8 (invalid bytes become U+FFFD)."""
    data = open(path, "rb").read()
    try:
        return data.decode("utf-8"), True
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), False


def iter_documents(path: str, *, text_field: str = "text",
                   text_field_flag: str = "--config.data.text_field"
                   ) -> Iterator[tuple[int | None, str]]:
    """(line number or None, text) for each document in `path`; .jsonl is one per line."""
    if not path.endswith(".jsonl"):
        yield None, read_text(path)[0]
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_number, line in enumerate(f, start=1):
            if line.strip():
                yield line_number, _jsonl_text(line, path, line_number, text_field,
                                               text_field_flag)


def _jsonl_text(line: str, path: str, line_number: int, text_field: str, flag: str) -> str:
    field = flag.removeprefix("--").removeprefix("config.")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{line_number} is not valid JSON ({e.msg}); every line of a "
                          ".jsonl file must be one JSON object") from None
    if not isinstance(record, dict) or text_field not in record:
        keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
        raise ConfigError(
            f"{field} = {text_field!r}: {path}:{line_number} has no key {text_field!r} "
            f"(it has: {keys}); set {flag} to the key that holds the document text")
    text = record[text_field]
    if not isinstance(text, str):
        raise ConfigError(f"{field} = {text_field!r}: {path}:{line_number} holds a "
                          f"{type(text).__name__} there, not a string; set {flag} to a text key")
    return text
