"""stdlib_next_line: at which depth does the next line of a held-out stdlib function go?

An embedded zero/few-shot task for small code models (the README main job's model cannot do
ARC): nothing to download, and every example comes from files the pretraining run never trains
on.

Files: the stdlib `*.py` files (fmjax/data/stdlib_corpus.py's list) whose path hash puts them
in the validation split at HELD_OUT_PERCENT = 5, the default `data.validation_percent` of the
`stdlib` source. A path is held out at p% when its hash bucket is below p (hash_split), so
these files are held out by every run with `data.validation_percent >= 5`. `test`/`tests`/
`idle_test` directories are left out, and so is any example whose code (up to indentation)
also appears in a training file or twice among the held-out ones (codec boilerplate). A second,
salted hash of the path sends FEWSHOT_PERCENT of the files to the `fewshot` split and the rest
to `test` (scored): the two never share a file.

Examples: in every function of >= 3 lines (stdlib_functions.function_sources: module-level
functions and methods, dedented to column 0) one statement is drawn with a seed among those
whose first line has MIN_CHARS-MAX_CHARS characters of code (not a comment) and at most
MAX_CONTEXT_CHARS of the function before it. The context is the function up to that line; the
4 choices are that line's code at 4 consecutive depths (4 spaces each), its own among them at
a seeded position. The code is the same in all four, so what the line says cannot give the
answer away: a model has to know Python's block structure from the lines before (a `:` opens
a block, `return`/`raise` close one, a docstring or call continues at its depth). The whole
example is also indented by a seeded 0..MAX_SHIFT levels, so that a model's prior for the
commonest depth (8 spaces, a method body) does not win on its own.

Why not "the true next line among lines of other functions": measured on the main job's model
at its old budget (450 steps, validation loss 4.83), that task scored 0.23 (chance 0.25): a
line's own frequency outweighs what a small model reads from the context. This one scored
0.475 zero-shot on the same checkpoint, and 0.33 when the context is replaced by a blank line
(the depth prior left over), so reading the context is worth about 14 points there.

Splitting context and answer: lm-evaluation-harness (multiple_choice.encode_pair) moves the
context's trailing whitespace into the answer and takes as the answer's ids what encoding the
joined text adds. fmjax's SentencePiece pieces span line ends ('):\\n', '\\n    '), so a
context that ends at a newline loses it (measured: 95% of such requests), and every answer would
be scored after a line with no break. So the context is cut before its last line's trailing
punctuation (or last word), and that tail starts every answer (see shared_tail).

All random choices use `random.Random("stdlib_next_line:<seed>:<path>:<line>...")`, so each
example is the same on every run and machine and does not move when another file changes.
Few-shot examples are separated by a blank line. On CPython 3.11.7: 82 held-out files (66
without test directories), 426 scored and 158 few-shot examples.
"""
from __future__ import annotations

import ast
import collections
import functools
import os
import random
import re
import sysconfig

from fmjax import evals
from fmjax.data import hash_split
from fmjax.data.stdlib_corpus import list_stdlib_files
from fmjax.data.stdlib_functions import LINE_RE, function_sources
from fmjax.data.text_files import read_text

NAME = "stdlib_next_line"
HELD_OUT_PERCENT = 5  # files held out from pretraining at data.validation_percent >= this
FEWSHOT_PERCENT = 30  # of the held-out files, by a salted path hash: few-shot examples
EXCLUDED_DIRS = ("test", "tests", "idle_test")
INDENT = "    "  # one level of indentation (the function is dedented to column 0)
MAX_SHIFT = 3  # the whole example is indented by 0..MAX_SHIFT levels (seeded): see example()
MIN_CHARS, MAX_CHARS = 8, 72  # answer line length without its indentation
MAX_CONTEXT_CHARS = 400  # of the function before the answer line (so 3 shots mostly fit 256 tokens)
NUM_CHOICES = 4
SEED = 0
SPLITS = ("test", "fewshot")


def held_out_files(stdlib_dir: str) -> list[str]:
    """Relative paths of the stdlib files the pretraining split holds out, tests excluded."""
    return [path for path in list_stdlib_files(stdlib_dir)
            if hash_split.split_for_key(path, HELD_OUT_PERCENT) == hash_split.VALIDATION
            and not set(path.split(os.sep)[:-1]) & set(EXCLUDED_DIRS)]


def split_of(rel_path: str) -> str:
    """'fewshot' or 'test' for a held-out file (a hash salted with the task's name)."""
    salted = hash_split.split_for_key(f"{NAME}:{rel_path}", FEWSHOT_PERCENT)
    return "fewshot" if salted == hash_split.VALIDATION else "test"


def context_and_line(source: str, rng: random.Random) -> tuple[str, str] | None:
    """(the function up to a statement, that statement's first line) for a dedented function
    source: a statement drawn with `rng` among those whose first line qualifies (indented by a
    multiple of INDENT, MIN_CHARS-MAX_CHARS characters of code, not a comment, at most
    MAX_CONTEXT_CHARS before it), or None if none does."""
    try:
        node = ast.parse(source).body[0]
    except SyntaxError:  # a dedent that left a continuation line unparsable
        return None
    lines = LINE_RE.findall(source)
    starts = sorted({stmt.lineno - 1 for stmt in ast.walk(node)
                     if isinstance(stmt, ast.stmt) and stmt is not node})
    qualifying = []
    for first in starts:
        context, line = "".join(lines[:first]), lines[first].rstrip("\r\n")
        code = line.lstrip(" ")
        depth, partial = divmod(len(line) - len(code), len(INDENT))
        if len(context) > MAX_CONTEXT_CHARS:
            break
        if (depth and not partial and MIN_CHARS <= len(code) <= MAX_CHARS
                and not code[:1].isspace() and not code.startswith("#")
                and context.endswith("\n")):
            qualifying.append((context, line))
    return rng.choice(qualifying) if qualifying else None


def stripped(text: str) -> tuple[str, ...]:
    """The lines of `text` without indentation or trailing spaces (a method and the same code
    as a module-level function compare equal)."""
    return tuple(line.strip() for line in text.splitlines())


def in_training_files(snippets: set[tuple[str, ...]], stdlib_dir: str) -> set[tuple[str, ...]]:
    """The `snippets` (stripped lines) that some file pretraining trains on contains
    (codec boilerplate such as encodings/*.py's getregentry(), say)."""
    by_first = {}
    for snippet in snippets:
        by_first.setdefault(snippet[0], []).append(snippet)
    found = set()
    for rel_path in list_stdlib_files(stdlib_dir):
        if hash_split.split_for_key(rel_path, HELD_OUT_PERCENT) == hash_split.VALIDATION:
            continue
        lines = stripped(read_text(os.path.join(stdlib_dir, rel_path))[0])
        for i, line in enumerate(lines):
            for snippet in by_first.get(line, ()):
                if lines[i:i + len(snippet)] == snippet:
                    found.add(snippet)
    return found


@functools.cache
def all_candidates(stdlib_dir: str) -> dict[str, list[tuple[str, str, str]]]:
    """{split: [(key 'path:line', context, answer line)]} of every qualifying function, in file
    and line order, without snippets found twice among them or in a training file."""
    found = []
    for rel_path in held_out_files(stdlib_dir):
        text, _ = read_text(os.path.join(stdlib_dir, rel_path))
        try:
            functions = list(function_sources(text))
        except SyntaxError:
            continue
        for line_number, source in functions:
            key = f"{rel_path}:{line_number}"
            cut = context_and_line(source, random.Random(f"{NAME}:{SEED}:{key}"))
            if cut:
                found.append((key, *cut))
    counts = collections.Counter(stripped(context + line) for _, context, line in found)
    seen = in_training_files(set(counts), stdlib_dir)
    out = {split: [] for split in SPLITS}
    for key, context, line in found:
        snippet = stripped(context + line)
        if counts[snippet] == 1 and snippet not in seen:
            out[split_of(key.rsplit(":", 1)[0])].append((key, context, line))
    return out


def candidates(split: str, stdlib_dir: str) -> list[tuple[str, str, str]]:
    """(key 'path:line', context, answer line) of every example of `split`."""
    return all_candidates(stdlib_dir)[split]


def shared_tail(context: str) -> int:
    """Where the context is cut: before the last line's trailing punctuation (`):`, `:`, `,`)
    or, if it ends in a word, before that word. What follows the cut starts every answer, so
    the line break is scored inside the answers: with a tokenizer whose pieces span line ends
    (fmjax's: '):\\n', '\\n    '), a context ending at the newline would lose it when the
    harness splits context and answer (multiple_choice.encode_pair moves trailing whitespace
    into the answer, then takes the answer's ids as what the joined text adds)."""
    last = context[:-1]
    match = re.search(r"[^\w\s]+$", last) or re.search(r"\w+$", last)
    return match.start() if match else len(last)


def example(key: str, context: str, line: str) -> evals.Example:
    """The line at NUM_CHOICES consecutive depths, its own among them, after the context; the
    whole example indented by a seeded 0..MAX_SHIFT levels (as a function nested in a class or
    a block is), so that the absolute depth alone does not tell (most stdlib lines sit at 8
    spaces, in method bodies: a model that always picks 8 spaces would beat chance without
    reading anything)."""
    rng = random.Random(f"{NAME}:{SEED}:{key}:depths")
    shift = INDENT * rng.randint(0, MAX_SHIFT)
    context = "".join(shift + row if row.strip() else row for row in LINE_RE.findall(context))
    code = line.lstrip(" ")
    depth = (len(shift) + len(line) - len(code)) // len(INDENT)
    lowest = rng.randint(max(0, depth - NUM_CHOICES + 1), depth)
    cut = shared_tail(context)
    choices = tuple(context[cut:] + INDENT * d + code for d in range(lowest, lowest + NUM_CHOICES))
    return evals.Example(context[:cut], choices, depth - lowest)


@functools.cache
def load_examples(split: str, stdlib_dir: str | None = None) -> tuple[evals.Example, ...]:
    """The examples of `split` ('test' or 'fewshot'), in file and line order."""
    if split not in SPLITS:
        raise ValueError(f"eval task {NAME}: no split {split!r}; use one of {SPLITS}")
    found = candidates(split, stdlib_dir or sysconfig.get_paths()["stdlib"])
    return tuple(example(*candidate) for candidate in found)


evals.register(evals.Task(NAME, load=lambda split: list(load_examples(split)),
                          eval_split="test", fewshot_split="fewshot", target_delimiter="",
                          fewshot_delimiter="\n\n"))
