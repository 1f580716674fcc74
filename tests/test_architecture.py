"""The shape of the house: no import circle, no import back up into the app factory, and a README
whose map names every module there is (issue 21).

The import graph is read from the source with ast, not by importing anything. Every import
statement counts, those inside functions too: a lazy import that closes a circle is still a
circle (it only moves the failure from import time to the first call), and a lower module that
reaches up, even lazily, should be handed what it needs at init_app instead. Imports made from
strings (preload.PRELOADED_MODULES, fed to importlib) are not edges: they only warm caches.

Layers, top to bottom; an import only ever goes down:

- entry points: wsgi.py, gunicorn.conf.py, bench/ and faceapp/contract.py (the api-snapshot
  tool) build or serve an app, so they may import the factory (``from faceapp import
  create_app``);
- the factory, faceapp/__init__.py: ``create_app`` imports the extensions, blueprints and
  commands, inside its functions;
- the package: every other module of faceapp/, which never imports the factory;
- its floor (FLOOR): modules that import nothing of faceapp but each other, so anything can
  import them (the version, the extension helper, errors and output, configuration).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("faceapp", "bench")
FACTORY = "faceapp"
# Besides every bench.* module: the modules that may import the factory (they build an app).
ENTRY_POINTS = {"faceapp.contract"}
FLOOR = {
    "faceapp.version",
    "faceapp.extension",
    "faceapp.errors",
    "faceapp.output",
    "faceapp.atomic",
    "faceapp.config",
}


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the packages, by dotted name (a package by its own name)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _targets(node: ast.AST, module: str, is_package: bool, files: dict) -> Iterable[str]:
    """The modules of `files` one import statement imports (none for other statements)."""
    if isinstance(node, ast.Import):
        for alias in node.names:  # `import a.b.c`: the deepest of a.b.c, a.b, a that is ours
            parts = alias.name.split(".")
            yield from [
                ".".join(parts[:n])
                for n in range(len(parts), 0, -1)
                if ".".join(parts[:n]) in files
            ][:1]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the module's own package, `level` - 1 steps up
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join([*package, base] if base else package)
        for alias in node.names:
            # `from faceapp import api` imports the module faceapp.api; `from faceapp import
            # create_app` (a name defined there) imports faceapp itself.
            submodule = f"{base}.{alias.name}"
            if submodule in files:
                yield submodule
            elif base in files:
                yield base


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """Each module's imports of the packages' modules, statements inside functions included."""
    graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        edges = {t for node in ast.walk(tree) for t in _targets(node, module, is_package, files)}
        graph[module] = edges - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(module_files())


def shortest_loop(graph: dict[str, set[str]], start: str) -> list[str]:
    """The shortest chain of imports from `start` back to itself (breadth first)."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for other in sorted(graph[node]):
            if other == start:
                return [*paths[node], start]
            if other not in paths:
                paths[other] = [*paths[node], other]
                queue.append(other)
    return []


def test_the_packages_have_no_import_circle(graph):
    circles = cycles(graph)
    described = [
        f"{len(c)} modules, e.g. " + " -> ".join(shortest_loop(graph, c[0])) for c in circles
    ]
    assert not circles, "import circles:\n" + "\n".join(described)


def test_only_entry_points_import_the_app_factory(graph):
    """faceapp/__init__.py is the top of the package: nothing below it imports it back."""
    allowed = {m for m in graph if m in ENTRY_POINTS or m.startswith("bench.")}
    upward = sorted(m for m, edges in graph.items() if FACTORY in edges and m not in allowed)
    assert not upward, f"these import faceapp/__init__.py (the factory) back: {upward}"


def test_the_floor_imports_nothing_above_it(graph):
    for module in sorted(FLOOR):
        above = {m for m in graph[module] if m.startswith("faceapp") and m not in FLOOR}
        assert not above, f"{module} is in the floor but imports {sorted(above)}"


def test_only_gunicorn_uses_its_worker_module(graph):
    """faceapp/gunicorn_worker.py is gunicorn's (its worker class, its malloc tuning): the
    Celery worker's preload comes from faceapp/preload.py, which both masters share."""
    users = sorted(m for m, edges in graph.items() if "faceapp.gunicorn_worker" in edges)
    assert users == [], f"these import gunicorn's worker module: {users}"


def test_the_graph_sees_function_level_imports_and_circles(tmp_path):
    """The checks can fail: a circle closed only by an import inside a function is found, and so
    is an import of the factory's own names."""
    package = tmp_path / "faceapp"
    (package / "store").mkdir(parents=True)
    (package / "__init__.py").write_text("def create_app():\n    from faceapp import metrics\n")
    (package / "metrics.py").write_text("def scrape():\n    from faceapp.store import store\n")
    (package / "store" / "__init__.py").write_text("from faceapp import metrics\n")
    (package / "contract.py").write_text("from faceapp import create_app, metrics\n")
    (package / "version.py").write_text("from . import metrics\n")
    (tmp_path / "bench").mkdir()
    graph = import_graph(module_files(tmp_path))
    assert graph["faceapp.metrics"] == {"faceapp.store"}
    assert graph["faceapp.contract"] == {"faceapp", "faceapp.metrics"}
    assert graph["faceapp.version"] == {"faceapp.metrics"}  # a relative import
    assert graph["faceapp"] == {"faceapp.metrics"}  # `from faceapp import metrics`: a module
    assert cycles(graph) == [["faceapp.metrics", "faceapp.store"]]
    assert shortest_loop(graph, "faceapp.store") == [
        "faceapp.store",
        "faceapp.metrics",
        "faceapp.store",
    ]


# -- the README's map of modules ------------------------------------------------------------------


def readme_map(readme: Path = ROOT / "README.md") -> dict[str, set[str]]:
    """The ``x.py`` names README.md's map gives for faceapp/ ("") and for each subpackage.

    The map is the first fenced block under "## Development". Its faceapp/ section is the lines
    after ``faceapp/`` indented by two or more; a subpackage's line starts with ``pkg/`` and its
    modules are named on it and on the lines below indented deeper than two.
    """
    text = readme.read_text(encoding="utf-8")
    block = text[text.index("\n## Development\n") :].split("```", 2)[1]
    named: dict[str, set[str]] = {"": set()}
    section, current = False, ""
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        if line.startswith("faceapp/"):
            section = True
            continue
        if section and indent == 0:
            break
        if not section or not line.strip():
            continue
        if indent == 2:
            first = line.split()[0]
            current = first[:-1] if first.endswith("/") else ""
            named.setdefault(current, set())
            if current:
                line = line.replace(first, "", 1)
        named[current] |= set(re.findall(r"\b\w+\.py\b", line))
    return named


def tree_map(package: Path = ROOT / "faceapp") -> dict[str, set[str]]:
    """The same, from the tree: faceapp's modules ("") and each subpackage's."""
    tree = {"": {p.name for p in package.glob("*.py") if p.name != "__init__.py"}}
    for folder in sorted(p for p in package.iterdir() if (p / "__init__.py").is_file()):
        tree[folder.name] = {p.name for p in folder.glob("*.py") if p.name != "__init__.py"}
    return tree


def test_the_readme_map_names_every_module_and_no_other():
    named, tree = readme_map(), tree_map()
    problems = []
    for package in sorted(set(named) | set(tree)):
        where = f"faceapp/{package}/" if package else "faceapp/"
        missing = sorted(tree.get(package, set()) - named.get(package, set()))
        gone = sorted(named.get(package, set()) - tree.get(package, set()))
        problems += [f"{where}: not named: {missing}"] if missing else []
        problems += [f"{where}: named, but not there: {gone}"] if gone else []
    assert not problems, "README.md's map of modules (## Development):\n" + "\n".join(problems)
