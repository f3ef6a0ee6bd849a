"""The package's imports flow one way: no module, and no package, imports one that imports it
back, counting imports inside functions (which hide a cycle from the interpreter, not from a
reader). Imports for type annotations only (`if TYPE_CHECKING:`) are left out: they never run."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sftkey_lora"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported(path: Path) -> set[str]:
    """The package's modules `path` imports, wherever in it, type-only imports aside."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                 for node in ast.walk(block)}
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target
                      for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name in MODULES} - {module_name(path)}


GRAPH = {name: imported(path) for name, path in MODULES.items()}


def unit(module: str) -> str:
    """A module's package below sftkey_lora, or the top-level module itself."""
    return ".".join(module.split(".")[:2])


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as err:
        return err.args[1]
    return None


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert cycle(GRAPH) is None


def test_no_package_imports_one_that_imports_it_back() -> None:
    packages: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        packages.setdefault(unit(module), set()).update(unit(t) for t in targets if unit(t) != unit(module))
    assert cycle(packages) is None


def test_the_leaves_import_nothing_above_them() -> None:
    """What every layer needs sits at the bottom: rank, device and memory; errors, tags, strategies."""
    for module, targets in GRAPH.items():
        if unit(module) == "sftkey_lora.runtime":
            assert {unit(t) for t in targets} <= {"sftkey_lora.runtime", "sftkey_lora.errors"}, module
    for leaf in ("sftkey_lora.errors", "sftkey_lora.tags", "sftkey_lora.strategies"):
        assert GRAPH[leaf] == set(), leaf


def test_imports_inside_functions_count_and_type_only_ones_do_not() -> None:
    # bench.contest imports the hardware facts inside its functions only.
    assert "sftkey_lora.runtime.hardware" in GRAPH["sftkey_lora.bench.contest"]
    # data.sources names the recipe's DataConfig for its annotations only.
    assert "sftkey_lora.recipe" not in GRAPH["sftkey_lora.data.sources"]
    assert "sftkey_lora.data.sources" in GRAPH["sftkey_lora.recipe"]
    # A cycle is seen: the hardware facts importing a stage would close one.
    graph = {**GRAPH, "sftkey_lora.runtime.hardware": {"sftkey_lora.train.stage"}}
    assert cycle(graph) is not None
