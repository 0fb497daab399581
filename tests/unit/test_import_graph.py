"""The modules of sftpd import each other without a circle, and none is oversized."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[2] / "src"
#: The size a module should stay under, with what little room the layout allows.
MAX_LINES = 620


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    """Module -> the sftpd modules it imports (``from pkg import module`` names the module)."""
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")
                if node.level:
                    base = base[: len(base) - node.level + 1]
                    module = ".".join([*base, node.module] if node.module else base)
                else:
                    module = node.module or ""
                for alias in node.names:
                    child = f"{module}.{alias.name}"
                    targets.append(child if child in files else module)
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def test_no_module_imports_itself_through_others() -> None:
    """Following imports from any module never leads back to it (no circle)."""
    graph = _graph()
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                circles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []
    assert len(graph) > 40, "the graph was read"


def test_no_module_is_oversized() -> None:
    """Every module of src/ stays under MAX_LINES lines."""
    sizes = {p.relative_to(SRC).as_posix(): len(p.read_text().splitlines())
             for p in SRC.rglob("*.py")}  # fmt: skip
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
