"""Which way imports go: the server never reaches the worker or the engine, and nothing is circular.

The graph is built from the source with ``ast``: every ``import`` of app/, worker/ and svp/,
at module level and inside functions (a lazy import is still a dependency, only a later one).
``pytest -s -k import_graph`` prints it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.database_free

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "worker", "svp")
# The one import of worker/ in app/: ``svplabel worker`` is the worker, started lazily.
ALLOWED_APP_TO_WORKER = {("app.cli", "worker.celery_app")}
# The worker's model runners, one per domain of app/, and what they share below them.
MODEL_RUNNERS = {"worker.rounds", "worker.coresets", "worker.evaluations"}
WORKER_SHARED = {"worker.inputs", "worker.training"}


@dataclass
class Graph:
    """Modules and their imports of each other; ``lazy`` holds the edges made inside functions."""

    modules: set[str] = field(default_factory=set)
    edges: dict[str, set[str]] = field(default_factory=dict)
    lazy: set[tuple[str, str]] = field(default_factory=set)

    def targets(self, module: str) -> set[str]:
        """What ``module`` imports."""
        return self.edges.get(module, set())


def module_name(path: Path) -> str:
    """``app/jobs/service.py`` -> ``app.jobs.service``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(node: ast.Import | ast.ImportFrom, here: str, is_package: bool) -> list[str]:
    """The dotted names an import statement names (``from a import b`` gives a and a.b)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = here.split(".")
        anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
        base = ".".join([*anchor, base] if base else anchor)
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def _lazy_nodes(tree: ast.Module) -> set[int]:
    """Ids of import nodes that sit inside a function (run on call, not on import)."""
    inside: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            inside.update(id(n) for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom))
    return inside


def build_graph() -> Graph:
    """The import graph of app/, worker/ and svp/, read from the source."""
    graph = Graph()
    files = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
    graph.modules = {module_name(p) for p in files}
    eager: set[tuple[str, str]] = set()
    for path in files:
        here = module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        lazy = _lazy_nodes(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for name in _imported(node, here, path.name == "__init__.py"):
                # ``from app.db import Base`` gives app.db (a module) and app.db.Base (not one).
                if name not in graph.modules or name == here:
                    continue
                graph.edges.setdefault(here, set()).add(name)
                (graph.lazy if id(node) in lazy else eager).add((here, name))
    # An import that is lazy in one place and eager in another is eager.
    graph.lazy -= eager
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.targets(v)):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph.modules):
        if v not in index:
            visit(v)
    return found


def reachable(graph: Graph, start: str) -> set[str]:
    """Every module ``start`` imports, directly or not."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for t in graph.targets(todo.pop()):
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


def render(graph: Graph) -> str:
    """The graph as text: each module's imports (``~`` marks a lazy one), then a summary."""
    lines = []
    for m in sorted(graph.modules):
        deps = [f"~{t}" if (m, t) in graph.lazy else t for t in sorted(graph.targets(m))]
        lines.append(f"{m} -> {', '.join(deps) if deps else '(nothing of ours)'}")
    n_edges = sum(len(t) for t in graph.edges.values())
    lines.append(
        f"{len(graph.modules)} modules, {n_edges} imports ({len(graph.lazy)} lazy: "
        + ", ".join(f"{a} -> {b}" for a, b in sorted(graph.lazy))
        + ")"
    )
    return "\n".join(lines)


def _top(module: str) -> str:
    return module.split(".")[0]


def test_import_graph_points_one_way() -> None:
    graph = build_graph()
    print("\n" + render(graph))
    app_to_worker = {
        (m, t)
        for m, ts in graph.edges.items()
        for t in ts
        if _top(m) == "app" and _top(t) == "worker"
    }
    assert app_to_worker <= ALLOWED_APP_TO_WORKER, sorted(app_to_worker - ALLOWED_APP_TO_WORKER)
    assert app_to_worker <= graph.lazy, "app.cli may start the worker only by a lazy import"
    engine_out = {(m, t) for m, ts in graph.edges.items() for t in ts if _top(m) == "svp"}
    assert all(_top(t) == "svp" for _, t in engine_out), sorted(engine_out)
    # The server's application, however deep its imports go, reaches neither the worker nor
    # the engine (and so never torch).
    served = reachable(graph, "app.main")
    assert not {m for m in served if _top(m) in ("worker", "svp")}


def test_import_graph_has_no_circles() -> None:
    graph = build_graph()
    assert cycles(graph) == []


def test_import_graph_flows_are_called_by_entry_points_only() -> None:
    # Cross-domain steps sit above the services: a service calling a flow would make a circle
    # (or hide a step where nobody looks for it). The entry points are the server's routers and
    # the worker's runners (a round's runner saves its batch through a flow).
    graph = build_graph()
    callers = sorted(m for m, ts in graph.edges.items() if "app.flows" in ts)
    assert callers, "nothing calls app.flows"
    assert all(m.endswith(".router") or m.startswith("worker.") for m in callers), callers


def test_import_graph_worker_runners_stand_on_shared_inputs_not_on_each_other() -> None:
    # A runner is found under its domain's name and reads its inputs from worker.inputs; one
    # runner importing another would bring back the two-in-one module.
    graph = build_graph()
    assert graph.modules >= MODEL_RUNNERS | WORKER_SHARED
    for runner in sorted(MODEL_RUNNERS):
        assert "worker.inputs" in graph.targets(runner), runner
        assert not graph.targets(runner) & (MODEL_RUNNERS - {runner}), runner
    for shared in sorted(WORKER_SHARED):
        assert not reachable(graph, shared) & MODEL_RUNNERS, shared
    # Broker tasks are sent by the embedding runner's fan-out, not from under the runners.
    assert "app.jobs.broker" not in reachable(graph, "worker.training")


def test_the_server_imports_neither_torch_nor_the_worker() -> None:
    # What the static graph cannot see: a third-party import that pulls torch in.
    code = (
        "import sys, app.main, app.jobs.dispatch, app.jobs.broker, app.system.health\n"
        "app.main.create_app()\n"
        "app.jobs.broker.get_celery()\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.split('.')[0] in ('svp', 'worker')]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
