"""The packages' layers, read from their sources (every import, those inside functions included):

* ``analyses``: pure functions of Datasets; they import nothing of ``repro``, ``report`` or torch.
* ``repro``: computes and writes the store; it never imports ``report``.
* ``report``: reads the store and the settings, and uses ``analyses``; never torch, never a compute stage.
* ``residual_stream``: the `repro` program, joining the compute commands and the report's; nothing imports it.

and no module imports, however indirectly, one that imports it back.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("residual_stream", "repro", "analyses", "report")
TORCH = ("torch", "torchvision", "lucent")
# What the report may import of repro: the store, the settings and the shipped files; every other repro
# module computes.
REPORT_READS = {"repro", "repro.errors", "repro.hashing", "repro.resources", "repro.profiles", "repro.reading",
                "repro.settings", "repro.store"}
ALLOWED: set[tuple[str, str]] = set()  # edges against the rules, each with its reason; none today


def module_files() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = module_files()


def imported(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, anywhere in its source: ``from a import b`` names ``a.b`` where that is
    a module of ours, else ``a``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return found


def ours(target: str) -> str | None:
    """The module of ours that ``target`` names, or one of its parents; None for another package's."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def import_graph() -> dict[str, set[str]]:
    """module -> the modules it imports: ours by name, other packages by their top-level name."""
    graph = {}
    for name, path in MODULES.items():
        graph[name] = {ours(target) or target.split(".")[0] for target in imported(name, path)} - {name}
    return graph


GRAPH = import_graph()


def package(module: str) -> str:
    return module.split(".")[0]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for source, targets in graph.items():
        for target in sorted(targets):
            if (source, target) in ALLOWED:
                continue
            if package(target) == "residual_stream" and package(source) != "residual_stream":
                wrong.append(f"{source} -> {target}: the program is imported by nothing")
            elif package(source) == "analyses" and (package(target) in ("repro", "report") or target in TORCH):
                wrong.append(f"{source} -> {target}: analyses are pure functions of Datasets")
            elif package(source) == "repro" and package(target) == "report":
                wrong.append(f"{source} -> {target}: the compute side never imports the report")
            elif package(source) == "report" and (target in TORCH or
                                                  package(target) == "repro" and target not in REPORT_READS):
                wrong.append(f"{source} -> {target}: the report reads the store, never computes")
    return wrong


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles among our modules: strongly connected components of more than one module
    (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph.get(module, ()):
            if target not in graph or (module, target) in ALLOWED:
                continue
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_every_package_is_read():
    assert {package(module) for module in MODULES} == set(PACKAGES)
    assert {"repro.cli", "repro.toy.commands", "report.commands", "residual_stream.cli"} <= set(MODULES)
    # imports inside functions count: the compute commands load their stages only when run
    assert "repro.model" in GRAPH["repro.cli"] and "report.builder" in GRAPH["report.commands"]


def test_imports_follow_the_layers():
    assert layer_violations(GRAPH) == []


def test_no_import_circles():
    assert cycles(GRAPH) == []


def test_each_allowed_exception_still_occurs():
    """An exception no longer needed is removed, so the list never hides a new edge."""
    assert [edge for edge in sorted(ALLOWED) if edge[1] not in GRAPH.get(edge[0], ())] == []


@pytest.mark.parametrize("source, target, why", [
    ("repro.store", "report.builder", "the compute side never imports the report"),
    ("report.units", "repro.model", "the report reads the store, never computes"),
    ("report.loader", "torch", "the report reads the store, never computes"),
    ("analyses.stats", "repro.profiles", "analyses are pure functions of Datasets"),
    ("report.commands", "residual_stream.cli", "the program is imported by nothing"),
])
def test_a_wrong_edge_is_named(source, target, why):
    graph = {**GRAPH, source: GRAPH[source] | {target}}
    assert layer_violations(graph) == [f"{source} -> {target}: {why}"]


def test_a_circle_is_found():
    graph = {**GRAPH, "analyses.stats": GRAPH["analyses.stats"] | {"analyses.noise"}}
    assert ["analyses.noise", "analyses.stats"] in cycles(graph)


def test_the_program_and_the_report_load_without_torch():
    """Only the commands that compute load torch: the program's startup, the report's modules and its
    commands read the store (``repro report`` on an unchanged store takes seconds, not torch's import)."""
    report_modules = sorted(module for module in MODULES if package(module) == "report")
    code = ("import sys; import residual_stream.cli, " + ", ".join(report_modules) +
            "; print(sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'torchvision')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
