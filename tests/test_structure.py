"""Code layout rules checked on the source: one import direction, no private names across modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of ``known`` that ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" for a in node.names} & set(known)
            if node.module in known:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names} & set(known)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes, or None."""
    state: dict[str, int] = {}  # 1 = on the path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_entities_modules_import_in_one_direction() -> None:
    """labelmap and base <- sam <- generators <- the rest; no import back, not even lazily."""
    known = {
        name: path
        for name, path in _modules(SRC / "entitwist" / "entities").items()
        if name != "entitwist.entities"  # the package re-exports its modules' names
    }
    graph = {name: _imports(path, known) - {name} for name, path in known.items()}
    assert _cycle(graph) is None, _cycle(graph)
    assert "entitwist.entities.generators" in graph["entitwist.entities.cli"]
    assert not graph["entitwist.entities.labelmap"]  # the bottom layer imports no sibling


def _private_uses(path: Path, known: dict[str, Path]) -> list[str]:
    tree = ast.parse(path.read_text())
    own = ".".join(path.relative_to(SRC).with_suffix("").parts) if SRC in path.parents else ""
    uses, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("entitwist"):
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                private = a.name.startswith("_") and not a.name.startswith("__")
                if private and f"{node.module}.{a.name}" not in known and node.module != own:
                    uses.append(f"{path.name}:{node.lineno} from {node.module} import {a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("entitwist"):
                    aliases[a.asname or a.name.split(".")[0]] = a.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and aliases.get(node.value.id, "") in known
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            uses.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
    return uses


@pytest.mark.parametrize("folder", ["src", "benchmarks"])
def test_no_private_name_is_used_outside_its_module(folder: str) -> None:
    """A ``_name`` stays in its module (a private *module* such as ``ops._chunked`` may be
    imported by its own package)."""
    known = _modules(SRC)
    uses = [u for p in sorted((REPO / folder).rglob("*.py")) for u in _private_uses(p, known)]
    assert uses == []


def test_private_name_finder_finds_a_planted_use(tmp_path: Path) -> None:
    planted = tmp_path / "x.py"
    planted.write_text(
        "from entitwist.data.jsonl import _resolve\n"
        "import entitwist.app.page as page\n"
        "css = page._CSS\n"
        "from entitwist.ops import _chunked\n"  # a private module: allowed
    )
    uses = _private_uses(planted, _modules(SRC))
    assert uses == ["x.py:1 from entitwist.data.jsonl import _resolve", "x.py:3 page._CSS"]
