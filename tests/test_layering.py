"""The package's layering, checked on fmjax's import graph (built with `ast` from the sources,
imports inside functions included): no cycles; the foundation (config, registry) imports no
fmjax module; data/ never reaches up into objectives/, training/ or models/; nn/ and models/
never into training/; no module imports a CLI; and only fmjax/kernels/ itself imports a kernel
module (everything else calls operations through the seam, fmjax/kernels/__init__.py)."""
import ast
import os

import pytest

from tests.helpers import ROOT

PACKAGE = os.path.join(ROOT, "fmjax")
CLIS = {"fmjax." + name for name in ("train", "finetune", "evaluate", "generate", "export",
                                     "convert", "info", "bench", "preflight", "tokenizer", "cli",
                                     "quantize", "prune")}


def module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-len(".py")].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def imports_of(source: str, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The fmjax modules `module` imports anywhere in its source (`from P import name` counts
    as P.name when that is a module, else as P)."""
    package = module if is_package else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {name for name in found if name in modules}


def import_graph(root: str = PACKAGE) -> dict[str, set[str]]:
    files = {}
    for directory, _, names in os.walk(root):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                files[module_name(path)] = path
    modules = set(files)
    graph = {}
    for module, path in files.items():
        with open(path) as f:
            graph[module] = imports_of(f.read(), module, path.endswith("__init__.py"), modules)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every edge that breaks a layering rule, as 'importer -> imported: rule'."""
    def under(module, package):
        return module == package or module.startswith(package + ".")

    rules = [
        (lambda a, b: a in ("fmjax.config", "fmjax.registry"),
         "config.py and registry.py import no fmjax module"),
        (lambda a, b: under(a, "fmjax.data") and any(
            under(b, p) for p in ("fmjax.objectives", "fmjax.training", "fmjax.models")),
         "data/ imports nothing from objectives/, training/ or models/"),
        (lambda a, b: (under(a, "fmjax.nn") or under(a, "fmjax.models"))
         and under(b, "fmjax.training"), "nn/ and models/ import nothing from training/"),
        (lambda a, b: under(b, "fmjax.kernels") and b != "fmjax.kernels"
         and not under(a, "fmjax.kernels"),
         "only fmjax/kernels/ imports a kernel module; call the operation (fmjax/kernels/__init__.py)"),
        (lambda a, b: b in CLIS and a not in CLIS, "no library module imports a CLI"),
    ]
    return [f"{a} -> {b}: {why}" for a, edges in sorted(graph.items()) for b in sorted(edges)
            for broken, why in rules if broken(a, b)]


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "fmjax.kernels.cpu.dense" in graph and len(graph) > 80
    # generate.main imports its library inside the function
    assert "fmjax.generation.sampling" in graph["fmjax.generate"]


def test_no_cycles():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_layering_rules_hold():
    assert violations(import_graph()) == []


@pytest.mark.parametrize("importer,source,rule", [
    ("fmjax/config.py", "from fmjax import mesh", "config.py and registry.py"),
    ("fmjax/data/packing.py", "def f():\n    from fmjax import objectives", "data/ imports"),
    ("fmjax/nn/layers.py", "from fmjax.training import step", "nn/ and models/"),
    ("fmjax/models/t5.py", "import fmjax.training.engine", "nn/ and models/"),
    ("fmjax/nn/layers.py", "from fmjax.kernels.cpu import dense", "only fmjax/kernels/"),
    ("fmjax/training/step.py", "from fmjax import train", "no library module imports a CLI"),
])
def test_a_forbidden_import_is_caught(importer, source, rule):
    """Each rule fails when the import it forbids is added (here to a copy of the graph)."""
    graph = import_graph()
    module = module_name(os.path.join(ROOT, importer))
    modules = set(graph)
    graph[module] = graph[module] | imports_of(source, module, False, modules)
    assert any(rule in v for v in violations(graph)), violations(graph)


def test_a_cycle_is_caught():
    graph = import_graph()
    graph["fmjax.mesh"] = graph["fmjax.mesh"] | {"fmjax.training.engine"}
    assert find_cycle(graph) is not None
