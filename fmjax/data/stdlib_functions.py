"""An embedded classification task: which standard-library package does a function come from?

Needs no download and has real labels. The running interpreter's stdlib files under a few large
packages (CLASSES) are parsed with `ast`; every function defined at module level or as a method
of a module-level class (also inside module-level `if`/`try`/`with` blocks, where
platform-specific code lives) of at least MIN_LINES lines is one example: `text` (its source
from the `def` line, decorators excluded, with the `def` line's indentation removed), `label`
(ClassLabel over CLASSES: the file's top-level package) and `path` (the file, relative to the
stdlib dir). `test`/`tests` directories are excluded (CPython 3.11 still ships `unittest/test`,
3.12 moved it out), so the task is about the same across 3.11-3.13.

Train and validation are split by a hash of the FILE path (hash_split), so all functions of a
file are on one side and near-duplicate methods of one class never straddle the split. Files
are coarse units: at the base default `data.validation_percent = 5` only 3 of the 6 packages
have any validation example on CPython 3.11, so this source needs about 20
(`--config.data.validation_percent=20`: every class held out, 691 validation / 2,162 train
functions on 3.11.7); opening it for classification with a class missing from validation is a
ConfigError that says so. Counts per split and class are in the builder's metadata
(`label_counts`).
"""
from __future__ import annotations

import ast
import collections
import dataclasses
import hashlib
import os
import platform
import re
import sysconfig
from typing import Iterator

import tensorflow_datasets as tfds

from fmjax.config import ConfigError
from fmjax.data import hash_split
from fmjax.data.classification import register_classification_builder
from fmjax.data.sources import register_source
from fmjax.data.stdlib_corpus import list_stdlib_files
from fmjax.data.text_files import read_text
from fmjax.data.text_source import TextSource, open_split, prepare, tfds_data_dir

# Top-level packages of CPython 3.11-3.13 with 300-800 functions each, none of them split out
# into separate distro packages (as tkinter and idlelib are on Debian). Functions per class,
# train / validation at validation_percent=20, on CPython 3.11.7: asyncio 699/63, email
# 175/244, importlib 294/41, multiprocessing 317/166, unittest 322/24, xml 355/153 (3.12.1 and
# 3.13.0 differ by at most 30 per class). Validation is lumpier than train: whole files are
# held out, and email/_header_value_parser.py alone holds 104 of its 244.
CLASSES = ("asyncio", "email", "importlib", "multiprocessing", "unittest", "xml")
EXCLUDED_PARTS = ("test", "tests")
MIN_LINES = 3  # shorter functions (one-line bodies, stubs) are skipped
RECOMMENDED_VALIDATION_PERCENT = 20
# A line and its end, as `ast` counts lines: only \r\n, \r and \n end one (not \f, \v, ...).
LINE_RE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


@dataclasses.dataclass(eq=False)
class StdlibFunctionsConfig(tfds.core.BuilderConfig):
    stdlib_dir: str = ""
    validation_percent: int = RECOMMENDED_VALIDATION_PERCENT


def stdlib_functions_config(validation_percent: int,
                            stdlib_dir: str | None = None) -> StdlibFunctionsConfig:
    stdlib_dir = stdlib_dir or sysconfig.get_paths()["stdlib"]
    dir_hash = hashlib.sha1(stdlib_dir.encode()).hexdigest()[:8]
    name = f"py{platform.python_version()}-val{validation_percent}-{dir_hash}"
    return StdlibFunctionsConfig(name=name, stdlib_dir=stdlib_dir,
                                 validation_percent=validation_percent,
                                 description=f"functions of {', '.join(CLASSES)} under "
                                             f"{stdlib_dir}")


def package_of(rel_path: str) -> str | None:
    """The class of a stdlib file: its top-level package if that is one of CLASSES."""
    parts = rel_path.split(os.sep)
    if len(parts) < 2 or parts[0] not in CLASSES or set(parts[1:-1]) & set(EXCLUDED_PARTS):
        return None
    return parts[0]


def iter_functions(body: list[ast.stmt], *, in_class: bool = False) -> Iterator[ast.AST]:
    """Module-level functions and methods of module-level classes, in source order.

    Looks inside `if`/`try`/`with` blocks (platform-specific definitions), not into function
    bodies (closures) or nested classes.
    """
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        elif isinstance(node, ast.ClassDef):
            if not in_class:
                yield from iter_functions(node.body, in_class=True)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            blocks = [node.body, getattr(node, "orelse", []), getattr(node, "finalbody", [])]
            blocks += [handler.body for handler in getattr(node, "handlers", [])]
            for block in blocks:
                yield from iter_functions(block, in_class=in_class)


def function_sources(source: str) -> Iterator[tuple[int, str]]:
    """(line number, dedented source) of every function of `source` with >= MIN_LINES lines."""
    tree = ast.parse(source)
    lines = LINE_RE.findall(source)
    for node in iter_functions(tree.body):
        if node.end_lineno - node.lineno + 1 >= MIN_LINES:
            yield node.lineno, dedent(node_source(lines, node))


def dedent(segment: str) -> str:
    """Removes the `def` line's indentation from every line that has it.

    Not `textwrap.dedent`, which removes only the margin common to all lines, and so nothing
    from a method holding a comment at column 0 (xml/sax/expatreader.py has one) or a
    multi-line string with less indented lines.
    """
    indent = segment[:len(segment) - len(segment.lstrip(" \t"))]
    return "".join(line[len(indent):] if line.startswith(indent) else line
                   for line in LINE_RE.findall(segment))


def node_source(lines: list[str], node: ast.AST) -> str:
    """`ast.get_source_segment(source, node, padded=True)` from pre-split lines.

    The stdlib version splits the whole file on every call (quadratic: 30 s instead of 1 s for
    this builder). A `def` only has indentation before it on its first line, so whole lines
    are kept and only the last is cut at `end_col_offset` (a UTF-8 byte offset).
    """
    first, last = node.lineno - 1, node.end_lineno - 1
    tail = lines[last].encode("utf-8")[:node.end_col_offset].decode("utf-8")
    return "".join(lines[first:last]) + tail


class FmjaxStdlibFunctions(tfds.core.GeneratorBasedBuilder):
    """Python standard-library functions labelled with their top-level package."""

    name = "fmjax_stdlib_functions"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__, metadata=tfds.core.MetadataDict(),
            features=tfds.features.FeaturesDict({
                "text": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=CLASSES),
                "path": tfds.features.Text()}),
            supervised_keys=("text", "label"))

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        cfg = self.builder_config
        by_split = {hash_split.TRAIN: [], hash_split.VALIDATION: []}
        for rel_path in list_stdlib_files(cfg.stdlib_dir):
            if package_of(rel_path):
                by_split[hash_split.split_for_key(rel_path, cfg.validation_percent)].append(
                    rel_path)
        self.info.metadata.update(
            files={split: len(paths) for split, paths in by_split.items()}, not_parsed=[],
            label_counts={split: dict.fromkeys(CLASSES, 0) for split in by_split})
        return {split: self._generate_examples(split, rel_paths)
                for split, rel_paths in by_split.items() if rel_paths}  # TFDS rejects empty splits

    def _generate_examples(self, split: str, rel_paths: list[str]):
        metadata = self.info.metadata
        counts = collections.Counter()
        for rel_path in rel_paths:
            text, _ = read_text(os.path.join(self.builder_config.stdlib_dir, rel_path))
            try:
                functions = list(function_sources(text))
            except SyntaxError:  # a file the running interpreter cannot parse: none in 3.11-3.13
                metadata["not_parsed"].append(rel_path)
                continue
            package = package_of(rel_path)
            for line_number, source in functions:
                counts[package] += 1
                yield f"{rel_path}:{line_number}", {"text": source, "label": package,
                                                    "path": rel_path}
        metadata["label_counts"][split].update(counts)


def stdlib_functions_builder(config) -> FmjaxStdlibFunctions:
    """The prepared builder for this interpreter (built on first use, ~2 s, then reused)."""
    validation_percent = hash_split.check_validation_percent(config.data.validation_percent)
    builder = FmjaxStdlibFunctions(config=stdlib_functions_config(validation_percent),
                                   data_dir=tfds_data_dir(config.data), file_format="array_record")
    return prepare(builder)


def check_every_class_held_out(builder: FmjaxStdlibFunctions) -> None:
    """ConfigError unless the validation split holds at least one function of every class."""
    percent = builder.builder_config.validation_percent
    counts = builder.info.metadata["label_counts"][hash_split.VALIDATION]
    missing = [name for name in CLASSES if not counts.get(name)]
    if missing:
        raise ConfigError(
            f"config.data.validation_percent = {percent}: the validation split of "
            f"{builder.info.full_name} holds no function of {', '.join(missing)} (whole files "
            f"are held out by path hash, and these packages have few files); set "
            f"--config.data.validation_percent={RECOMMENDED_VALIDATION_PERCENT}")


@register_classification_builder("stdlib_functions")
def stdlib_functions_classification_builder(config) -> FmjaxStdlibFunctions:
    """The prepared builder, checked to hold out every class (classification evaluates them)."""
    builder = stdlib_functions_builder(config)
    check_every_class_held_out(builder)
    return builder


@register_source("stdlib_functions")
def open_stdlib_functions_text(config, split: str) -> TextSource:
    """The function sources as plain documents (for LM use of the same data)."""
    return open_split(stdlib_functions_builder(config), split)
