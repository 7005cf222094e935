"""The package's shape, read from the source with :mod:`ast` (nothing is imported):

- each module imports only the core (``nets``), the shared helpers and modules of its own or an
  EARLIER stage, in the pipeline's order (imports inside functions count too);
- no import cycles between modules;
- no module over :data:`MAX_LINES` lines (the C++ kernel is not a ``.py`` file).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "weightspace"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# The stages in pipeline order: a stage may import the stages before it, never one after it.
STAGES = ("nets", "zoo", "symmetry", "features", "data", "autoencoder", "evaluation", "analysis")
# Importable from anywhere; they import only each other. ``weightspace`` itself holds __version__.
SHARED = ("errors", "config", "cli", "tracking", "schema")

MAX_LINES = 550

# Edges that break the stage order and are on their way out: (importing module, imported
# stage) -> why it is still there, each with a comment; delete an entry with its edge (a test
# below fails on a stale one). Empty: the last one, autoencoder.train -> evaluation (the
# end-of-training evaluation), went behind the config's ``evaluator`` ``_target_``.
ALLOWED_BACKWARD: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


MODULES = _modules()


def _resolve(name: str) -> str:
    """The module an import of ``name`` runs: ``name`` itself or its longest known prefix."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported module of this package, line, typing only) for every import in ``path``, at
    any depth; typing only: under ``if TYPE_CHECKING:``, never run."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _is_type_checking(node.test)
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, level - 1 packages up
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            # ``from pkg import sub`` imports the submodule when there is one.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                found.append((_resolve(target), node.lineno, id(node) in typing_only))
    return found


def _graph() -> dict[str, list[tuple[str, int, bool]]]:
    return {m: _imports(m, p) for m, p in MODULES.items()}


def _stage(module: str) -> str:
    """``weightspace.zoo.train.loop`` -> ``zoo``; the shared helpers and the root -> ``shared``."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in SHARED:
        return "shared"
    assert parts[1] in STAGES, f"{module}: not in a known stage; add its folder to STAGES"
    return parts[1]


def _rank(stage: str) -> int:
    return -1 if stage == "shared" else STAGES.index(stage)


def _backward_edges() -> list[tuple[str, str, int, str]]:
    """(module, imported module, line, imported stage) for every edge against the stage order.

    A shared helper imports only shared helpers; a stage imports shared helpers, its own stage
    and earlier ones.
    """
    bad = []
    for module, edges in _graph().items():
        rank = _rank(_stage(module))
        for target, line, _ in edges:  # a type-only import still points its way
            target_stage = _stage(target)
            if target_stage != "shared" and _rank(target_stage) > rank:
                bad.append((module, target, line, target_stage))
    return bad


def test_stages_import_only_earlier_stages():
    bad = [b for b in _backward_edges() if (b[0], b[3]) not in ALLOWED_BACKWARD]
    lines = [
        f"{_rel(m)}:{line}: {_stage(m)} imports {t} (stage {s}, later in the pipeline)"
        for m, t, line, s in bad
    ]
    assert not bad, (
        "imports against the stage order " + " < ".join(STAGES) + ":\n" + "\n".join(lines)
    )


def test_allowed_backward_edges_still_exist():
    # An exception whose edge is gone must leave the list, so the list stays honest.
    present = {(m, s) for m, _, _, s in _backward_edges()}
    stale = [k for k in ALLOWED_BACKWARD if k not in present]
    assert not stale, f"ALLOWED_BACKWARD lists edges that no longer exist, delete them: {stale}"


def _cycles(graph: dict[str, list[tuple[str, int, bool]]]) -> list[list[str]]:
    """The strongly connected components with a cycle (Tarjan), each as one cycle's path.

    Imports under ``if TYPE_CHECKING:`` never run, so they make no cycle.
    """
    succ = {
        m: sorted({t for t, _, typing in edges if t in graph and not typing})
        for m, edges in graph.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth <= number of modules (~100)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in succ[v]:
                components.append(component)

    for v in sorted(succ):
        if v not in index:
            visit(v)

    cycles = []
    for component in components:  # the shortest cycle through its first module (breadth-first)
        members, start = set(component), min(component)
        parent: dict[str, str] = {}
        frontier = [start]
        while start not in parent:
            reached = []
            for v in frontier:
                for w in succ[v]:
                    if w in members and w not in parent:
                        parent[w] = v
                        reached.append(w)
            frontier = reached
        path, v = [start], parent[start]
        while v != start:
            path.append(v)
            v = parent[v]
        cycles.append([start, *reversed(path[1:]), start])
    return cycles


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_cycle():
    # The finder itself, on a made-up graph: a -> b -> c -> a, and d alone.
    graph = {
        "a": [("b", 1, False)],
        "b": [("c", 1, False)],
        "c": [("a", 1, False), ("b", 2, True)],
        "d": [("a", 1, False)],
    }
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    graph["c"] = [("b", 2, True)]  # a type-only import makes no cycle
    assert _cycles(graph) == []


def test_no_module_over_max_lines():
    sizes = {_rel(m): len(p.read_text().splitlines()) for m, p in MODULES.items()}
    long = {m: n for m, n in sizes.items() if n > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_module_is_read():
    # Guards the test against reading nothing (a moved SRC): the stages and helpers are there.
    assert {_stage(m) for m in MODULES} == {"shared", *STAGES}
    assert len(MODULES) > 50


def _rel(module: str) -> str:
    return str(MODULES[module].relative_to(SRC.parents[1]))
