"""The commands in README.md and docs/*.md stay valid as the package moves.

(a) every `python -m fmjax.X` names a module file fmjax/X.py that exists;
(b) every `--config=configs/....py` (and any other configs/....py path) exists;
(c) every fmjax/... path in the README's "Map of the house" exists (NAME-style placeholders
    are skipped);
(d) `python -m fmjax.info --config=configs/C.py` runs for every config C named in a ```bash
    block, exits 0 and ends with a JSON line holding a positive parameter count.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
FILES = [README, *DOCS]

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
MODULE = re.compile(r"\bpython3?\s+-m\s+(fmjax(?:\.\w+)+)")
CONFIG_FLAG = re.compile(r"--config=(configs/[\w./-]+?\.py)\b")
CONFIG_PATH = re.compile(r"(?<![\w/.])(configs/[\w/-]+\.py)\b")
FMJAX_PATH = re.compile(r"(?<![\w/.-])(fmjax/[\w./]*)")
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")  # NAME, X, FAMILY, STEP, ...


def _text(path: pathlib.Path) -> str:
    return path.read_text(encoding="utf-8")


def _name(path: pathlib.Path) -> str:
    return str(path.relative_to(ROOT))


def bash_blocks(path: pathlib.Path) -> list[str]:
    return [m.group(2) for m in FENCE.finditer(_text(path)) if m.group(1) == "bash"]


def is_placeholder(path: str) -> bool:
    """configs/NAME.py, fmjax/hf/NAME.py, fmjax.X: a component that is an upper-case word."""
    return any(PLACEHOLDER.fullmatch(part.split(".")[0])
               for part in re.split(r"[/.]", path.removesuffix(".py")) if part)


def mentioned(pattern: re.Pattern, texts) -> set[tuple[str, str]]:
    """(file, match) pairs for `pattern` over (file, text) pairs, placeholders left out."""
    return {(name, m.group(1)) for name, text in texts for m in pattern.finditer(text)
            if not is_placeholder(m.group(1))}


def all_texts():
    return [(_name(p), _text(p)) for p in FILES]


def bash_texts():
    return [(_name(p), "\n".join(bash_blocks(p))) for p in FILES]


def map_section() -> str:
    """README.md from the '## Map of the house' heading to the next '## ' heading."""
    text = _text(README)
    start = text.index("## Map of the house")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def map_paths() -> set[str]:
    """fmjax/... paths in the map: written out in its text, or as entries of its tree block
    (a block starting with `fmjax/` whose entries are indented two spaces; a line indented
    deeper is the description of the entry above it)."""
    section = map_section()
    paths = {m.group(1).rstrip(".") for m in FMJAX_PATH.finditer(section)}
    for m in FENCE.finditer(section):
        lines = m.group(2).splitlines()
        if not lines or lines[0].strip() != "fmjax/":
            continue
        for line in lines[1:]:
            if not line.startswith("  ") or line.startswith("   "):
                continue
            head = re.split(r"\s{2,}", line.strip())[0]
            for token in head.split():
                if re.fullmatch(r"[\w.]+(/[\w.]+)*/?", token) and (
                        token.endswith("/") or token.endswith(".py")):
                    paths.add("fmjax/" + token)
    return {p for p in paths if not is_placeholder(p)}


def info_configs() -> list[str]:
    """Configs named by `--config=` in a ```bash block of README.md or docs/*.md."""
    return sorted({c for _, c in mentioned(CONFIG_FLAG, bash_texts())})


def test_docs_exist_and_have_commands():
    assert DOCS, "docs/*.md is missing"
    assert bash_blocks(README), "README.md has no ```bash block"
    assert len(_text(README).splitlines()) <= 400, "README.md is kept to at most 400 lines"
    modules = {m for _, m in mentioned(MODULE, bash_texts())}
    assert {"fmjax.train", "fmjax.finetune", "fmjax.info"} <= modules


def test_python_m_modules_exist():
    missing = []
    for name, module in sorted(mentioned(MODULE, all_texts())):
        rel = pathlib.Path(*module.split("."))
        if not (ROOT / rel.with_suffix(".py")).is_file():
            missing.append(f"{name}: python -m {module} (no {rel.with_suffix('.py')})")
    assert not missing, "\n".join(missing)


def test_config_paths_exist():
    refs = mentioned(CONFIG_FLAG, all_texts()) | mentioned(CONFIG_PATH, all_texts())
    assert refs
    missing = [f"{name}: {path}" for name, path in sorted(refs) if not (ROOT / path).is_file()]
    assert not missing, "\n".join(missing)


def test_map_of_the_house_paths_exist():
    paths = map_paths()
    assert "fmjax/training/" in paths and "fmjax/kernels/__init__.py" in paths, sorted(paths)
    missing = [p for p in sorted(paths)
               if not (ROOT / p).is_dir() and not (ROOT / p).is_file()]
    assert not missing, f"README.md's map names paths that do not exist: {missing}"


def test_placeholders_are_recognised():
    assert is_placeholder("fmjax/models/NAME.py") and is_placeholder("configs/NAME.py")
    assert is_placeholder("fmjax.X") and is_placeholder("fmjax/kernels/cpu/X.cc")
    assert not is_placeholder("fmjax/training/loop.py")
    assert not is_placeholder("configs/finetune/default.py")


@pytest.mark.parametrize("config", info_configs())
def test_info_runs_for_configs_in_commands(config):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "fmjax.info", f"--config={config}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"fmjax.info --config={config}:\n{proc.stderr[-3000:]}"
    last = proc.stdout.strip().splitlines()[-1]
    info = json.loads(last)
    assert isinstance(info["params"], int) and info["params"] > 0, last
    assert info["total_params"] >= info["params"], last
