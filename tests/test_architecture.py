"""The package's structure, as docs/architecture.md draws it: no import cycle between modules, subpackages that
import only the layers below them, and no module reaching for the launcher or the
study loop for a constant. Read from the source with `ast` (every import, inside functions and `TYPE_CHECKING` too,
relative ones resolved). An edge is an import a module writes: the parent packages Python runs first are left out, as
every `optuna_trainer.x` import would otherwise lead back to `optuna_trainer/__init__.py`."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "optuna_trainer"

# Which part of the package may import which (docs/architecture.md, "Layers"). A part is a subpackage, or one of
# the groups of top-level modules: "base" (what everything may use), "arguments" (the search fields and their
# validators), "face" (the trainer, config files, the command line) and "package" (the public `__init__`).
BASE = {"_compat", "_classes", "_files", "exceptions", "log"}
ARGUMENTS = {"arguments", "validation"}
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "space": {"base"},
    "study": {"base"},
    "training": {"base", "space", "study"},
    "output": {"base", "space", "study", "training"},
    "processes": {"base", "study", "output"},
    "arguments": {"base", "space", "study"},
    "search": {"base", "arguments", "space", "study", "training", "output", "processes"},
    "face": {"base", "arguments", "space", "study", "training", "output", "processes", "search"},
    "integrations": {"base", "arguments", "training", "face"},
    "package": {
        "base",
        "arguments",
        "space",
        "study",
        "training",
        "output",
        "processes",
        "search",
        "face",
        "integrations",
    },
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    """The part of the package `module` belongs to: its subpackage (the subpackage's `__init__` included), else the
    group of its top-level module."""
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    if len(parts) > 2 or (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "base" if parts[1] in BASE else "arguments" if parts[1] in ARGUMENTS else "face"


def test_the_layers_have_no_circle():
    """The allowed imports between parts form no cycle either (the drawing of docs/architecture.md)."""
    graph = {part: allowed - {part} for part, allowed in ALLOWED.items()}
    assert find_cycle(graph) is None


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (`from pkg import module` counts as importing the module)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # `from . import x`, `from ..study import attrs`
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
                # Names that are not submodules come from `base` itself.
                if base in modules and len(submodules) < len(node.names):
                    submodules.append(base)
                targets = submodules
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name in modules]
            graph[name].update(t for t in targets if t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_part_has_its_layer():
    parts = {part_of(module) for module in import_graph()}
    assert parts <= set(ALLOWED), (
        f"parts with no entry in ALLOWED (and docs/architecture.md): {sorted(parts - set(ALLOWED))}"
    )


def test_each_part_imports_only_the_layers_below_it():
    wrong = [
        f"{source} ({part_of(source)}) imports {target} ({part_of(target)})"
        for source, targets in import_graph().items()
        for target in targets
        if part_of(target) != part_of(source) and part_of(target) not in ALLOWED[part_of(source)]
    ]
    assert wrong == [], "imports against the layers of docs/architecture.md:\n" + "\n".join(sorted(wrong))


def test_nothing_reaches_for_the_launcher_or_the_loop():
    graph = import_graph()
    launcher = sorted(m for m, t in graph.items() if "optuna_trainer.processes.launcher" in t)
    loop = sorted(m for m, t in graph.items() if "optuna_trainer.search.loop" in t)
    assert launcher == ["optuna_trainer.cli"], f"only cli.py may import processes/launcher.py, imported by {launcher}"
    assert loop == ["optuna_trainer.search.search"], (
        f"only search/search.py may import search/loop.py, imported by {loop}"
    )
