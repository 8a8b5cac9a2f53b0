"""The import graph of the package is one-way (docs STYLE: "the front"): the command line
(chaosgen.cli) is a thin layer that no other chaosgen module imports, and the performance model's
two modules (predict, calibrate) depend one on the other, not both ways.

Every import is counted, also those inside functions (a deferred import is still a dependency).
`python tests/test_imports.py` prints the graph, one `module -> imported module` line each."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "chaosgen"


def module_name(path: Path) -> str:
    """chaosgen/data/__init__.py -> chaosgen.data; chaosgen/train.py -> chaosgen.train."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolved(importer: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The chaosgen modules a `from ... import ...` names (a name may be a submodule)."""
    if node.level:
        base = importer.split(".")
        base = base[: len(base) - node.level + (1 if is_package else 0)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    if not prefix.startswith("chaosgen"):
        return []
    return [prefix] + [f"{prefix}.{a.name}" for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """{module: chaosgen modules it imports anywhere in its source}, over the whole package."""
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    graph: dict[str, set[str]] = {}
    for f in files:
        name = module_name(f)
        deps: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                found = _resolved(name, f.name == "__init__.py", node)
            else:
                continue
            deps |= {m for m in found if m in modules and m != name}
        graph[name] = deps
    return graph


def test_nothing_imports_the_cli() -> None:
    """The CLI is the top of the graph: no chaosgen module imports chaosgen.cli."""
    graph = import_graph()
    assert "chaosgen.cli" in graph
    back = sorted(m for m, deps in graph.items() if "chaosgen.cli" in deps)
    assert back == [], f"these modules import the CLI: {back}"


def test_performance_model_is_one_way() -> None:
    """calibrate measures for the model in predict; predict never imports calibrate."""
    graph = import_graph()
    assert "chaosgen.predict" in graph["chaosgen.calibrate"]
    assert "chaosgen.calibrate" not in graph["chaosgen.predict"]


def test_graph_sees_deferred_and_relative_imports() -> None:
    """The walker itself: a function-level `from ..errors import` inside a package counts."""
    graph = import_graph()
    assert "chaosgen.errors" in graph["chaosgen.data"]  # `from ..errors import DataError`
    assert "chaosgen.pipeline" in graph["chaosgen.plot"]  # imported inside a function only


if __name__ == "__main__":
    for mod, deps in sorted(import_graph().items()):
        for dep in sorted(deps):
            print(f"{mod} -> {dep}")
    sys.exit(0)
