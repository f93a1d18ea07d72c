"""The layout the docs describe is the layout on disk, and imports do not go round in circles.

- every `service/...` path that the README, bench/README.md or a page of docs/ names exists;
- every module of `service/` has a row in docs/ARCHITECTURE.md's table ("One file per concept");
- no import cycle among the modules of `service/` (every import counts: at module level, inside
  functions and under TYPE_CHECKING);
- no module is far over the ~350 lines a module is meant to stay under.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
SERVICE = ROOT / "service"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A path as the docs write it: `service/a/b.py`, `service/a/`, `service/m/{x,y}.py`.
PATH = re.compile(r"service/[\w./{},]*[\w/}]")
MAX_LINES = 400  # the aim is about 350; this catches a module that has clearly outgrown it


def _expand(path: str) -> list[str]:
    """`service/m/{x,y}.py` → [`service/m/x.py`, `service/m/y.py`]."""
    match = re.search(r"\{([^}]*)\}", path)
    if match is None:
        return [path]
    head, tail = path[: match.start()], path[match.end() :]
    return [p for part in match.group(1).split(",") for p in _expand(head + part + tail)]


def _named_paths(text: str) -> set[str]:
    paths = set()
    for found in PATH.findall(text):
        found = found.rstrip(".,")
        # `service/...` inside a longer word (`aim-service/`) or a module path with dots is
        # not a file path.
        if not (found.endswith(".py") or found.endswith("/")):
            continue
        paths.update(_expand(found))
    return paths


def _modules() -> list[Path]:
    return sorted(p for p in SERVICE.rglob("*.py") if "assets" not in p.parts)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_service_path_the_docs_name_exists(doc: Path) -> None:
    named = _named_paths(doc.read_text())
    if doc in (ARCHITECTURE, ROOT / "README.md"):
        assert named, f"{doc.name} names no service/ path: the pattern is broken"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


def test_every_module_has_a_row_in_the_architecture_table() -> None:
    text = ARCHITECTURE.read_text()
    table = text[text.index("## One file per concept") :]
    rows = {p for line in table.splitlines() if line.startswith("|") for p in _named_paths(line)}
    missing = sorted(str(p.relative_to(ROOT)) for p in _modules())
    missing = [p for p in missing if p not in rows]
    assert not missing, f"modules without a row in docs/ARCHITECTURE.md's table: {missing}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, known: set[str]) -> Iterator[str]:
    """The `service` modules that `path` (module `name`) imports, anywhere in the file."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in known:  # `from . import accounts`
                    yield submodule
                elif source in known:
                    yield source


def _import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in _modules()}
    known = set(paths)
    return {name: set(_imports(path, name, known)) - {name} for name, path in paths.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_service_modules() -> None:
    graph = _import_graph()
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100, "the graph looks empty"
    assert "service.runtime" in graph["service.api.state"], "the import walk missed an edge"
    assert not _cycles(graph), f"import cycles among service modules: {_cycles(graph)}"


def test_no_module_has_outgrown_one_sitting() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by concept): {long}"
