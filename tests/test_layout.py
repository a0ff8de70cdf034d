"""The tree shows the architecture (README, "Where things are"): imports run one way, down the floors
(jobs -> serving -> cluster) and down the layers inside cluster/ and jobs/, with no circle between modules or
folders. Every import counts, those inside functions too: a deferred import is still a dependency."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ("jobs", "serving", "cluster")
# Top first; a unit (a folder, or a module at the top of its floor) imports only units of its own layer or below.
LAYERS = {
    "cluster": (
        ("indexing",),
        ("shards",),
        ("collections",),
        ("models", "keys", "audit"),
        ("pipeline", "storage", "locks", "raycluster", "raycluster_env"),
        ("errors", "settings", "metrics", "text"),
    ),
    "jobs": (("cli",), ("bench",), ("demo", "fusion", "identify", "processes", "s3local", "submit"), ("evaluate",)),
}
MAX_LINES = 400


def modules() -> dict[str, Path]:
    found = {}
    for floor in FLOORS:
        for path in (ROOT / floor).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(found: dict[str, Path]) -> dict[str, set[str]]:
    """Each module's imports of the product's own modules (`from a import b` names module a.b where it is one)."""

    def own(name: str) -> str | None:
        while name and name not in found:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in found.items():
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(own(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.update(own(f"{node.module}.{alias.name}") for alias in node.names)
        graph[module] = {target for target in targets if target and target != module}
    return graph


GRAPH = imports(modules())


def unit(module: str) -> tuple[str, str]:
    floor, _, rest = module.partition(".")
    return floor, rest.partition(".")[0]


def layer(module: str) -> int | None:
    floor, name = unit(module)
    for depth, names in enumerate(LAYERS.get(floor, ())):
        if name in names:
            return depth
    return None


def test_every_unit_of_a_layered_floor_has_a_layer() -> None:
    unplaced = sorted({m for m in GRAPH if unit(m)[0] in LAYERS and unit(m)[1] and layer(m) is None})
    assert not unplaced, f"add these to LAYERS (and README's table): {unplaced}"


def test_floors_import_downward_only() -> None:
    wrong = [
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if FLOORS.index(unit(target)[0]) < FLOORS.index(unit(module)[0])
    ]
    assert not wrong


def test_layers_inside_cluster_and_jobs_import_downward_only() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        for target in targets:
            if unit(module)[0] != unit(target)[0] or unit(module)[0] not in LAYERS or not unit(target)[1]:
                continue
            mine, theirs = layer(module), layer(target)
            if mine is not None and theirs is not None and theirs < mine:
                wrong.append(f"{module} -> {target}")
    assert not wrong


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph, if it has any (depth-first search, colouring nodes in progress)."""
    state: dict[str, int] = defaultdict(int)  # 0 unseen, 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state[target] == 1:
                return [*path[path.index(target) :], target]
            if state[target] == 0 and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state[node] == 0 and (found := visit(node)):
            return found
    return None


def test_no_module_imports_itself_through_others() -> None:
    assert cycle(GRAPH) is None


def test_no_two_folders_import_each_other() -> None:
    folders: dict[str, set[str]] = defaultdict(set)
    for module, targets in GRAPH.items():
        for target in targets:
            mine, theirs = module.rpartition(".")[0], target.rpartition(".")[0]
            if mine != theirs and not theirs.startswith(f"{mine}.") and not mine.startswith(f"{theirs}."):
                folders[mine].add(theirs)
    assert cycle(folders) is None


@pytest.mark.parametrize("floor", FLOORS)
def test_no_file_is_over_the_line_limit(floor: str) -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / floor).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split by job (STYLE.md): {long}"


def test_the_checks_see_a_circle_and_an_upward_import() -> None:
    """The checks themselves: a planted circle is found, and so is an import from a lower layer to a higher one."""
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
    models, pipeline = layer("cluster.models.registry"), layer("cluster.pipeline.align")
    assert models is not None and pipeline is not None and models < pipeline  # the pipeline may not import models
