"""The package's import structure: no cycles, arrows only downwards, no imports hidden in functions.

The module graph is read from the source with ``ast`` (nothing is imported): an edge ``a -> b`` for
every module-level ``import``/``from ... import`` of a ``vaelab`` module in ``a`` (``if
TYPE_CHECKING:`` blocks excluded: they never run). ``from vaelab.pkg import name`` is an edge to
``vaelab.pkg.name`` when that is a module, else to ``vaelab.pkg``; importing a module also runs its
packages' ``__init__``, so ``a -> vaelab.x.y`` implies ``a -> vaelab.x`` (unless ``a`` is inside
``vaelab.x``, whose ``__init__`` is then already running).

Layers (DESIGN.md, "A layout to aim for"), from the top down; a module may import its own layer
and the ones below it, never one above:

- entry points (``vaelab-train``/``-eval``/``-compress``/``-reproduce``) and their task wrapper;
- run utilities, checkpoints and ``load_run``, callbacks, loggers, pictures, bits-back coding;
- ``lit`` (what a step computes), above ``training`` (how steps run, never imports ``lit``);
- ``evaluation`` (reported figures);
- ``models`` (a model holds its objective, so it sits above ``objectives``);
- ``objectives`` (ELBO, beta, ``L_k`` and its chunking);
- probability and networks: ``data``, ``nn``, ``distributions``, ``flows``;
- the vocabulary every layer may import: ``units``, ``extras``, ``optim``, ``config``.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "vaelab"

#: Top first. Each entry is a module or a package prefix (``vaelab.models`` covers its modules).
LAYERS: list[tuple[str, ...]] = [
    ("vaelab.train", "vaelab.eval", "vaelab.compression.cli", "vaelab.reproduce", "vaelab.collect"),
    ("vaelab.tasks",),
    ("vaelab.utils", "vaelab.compression"),
    ("vaelab.callbacks", "vaelab.viz", "vaelab.loggers", "vaelab.distributed"),
    ("vaelab.lit",),
    ("vaelab.resume", "vaelab.runs"),
    ("vaelab.checkpoints",),
    ("vaelab.training",),
    ("vaelab.evaluation",),
    ("vaelab.models",),
    ("vaelab.objectives",),
    ("vaelab.data", "vaelab.nn", "vaelab.distributions", "vaelab.flows"),
    ("vaelab.config", "vaelab.extras"),
    (
        "vaelab.units",
        "vaelab.optim",
        "vaelab.config_check",
        "vaelab.safe_config",
        "vaelab.checkpoint_hygiene",
        "vaelab.runlock",
        "vaelab.stop",
    ),
]

#: Arrows that point up, each with the reason it is allowed (empty: there are none).
UPWARD_ALLOWED: dict[tuple[str, str], str] = {}

#: ``vaelab`` imports inside functions, each with the reason (none dodges a cycle).
LOCAL_IMPORTS_ALLOWED: dict[tuple[str, str], str] = {
    ("vaelab", "vaelab.runs"): (
        "vaelab.load_run on first use (PEP 562 __getattr__): every import of a vaelab module runs "
        "vaelab/__init__, and runs imports Lightning"
    ),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(node: ast.ImportFrom, here: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = here.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _targets(
    node: ast.Import | ast.ImportFrom, here: str, is_pkg: bool, mods: set[str]
) -> set[str]:
    """The vaelab modules an import statement runs (the named module and its packages)."""
    named: list[str] = []
    if isinstance(node, ast.Import):
        named = [a.name for a in node.names]
    else:
        base = _resolve(node, here, is_pkg)
        for a in node.names:
            sub = f"{base}.{a.name}"
            named.append(sub if sub in mods else base)
    out: set[str] = set()
    for name in named:
        if name != "vaelab" and not name.startswith("vaelab."):
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            # A package that holds ``here`` is already being imported when ``here`` runs.
            implied_ancestor = i < len(parts) and here.startswith(prefix + ".")
            if prefix in mods and not implied_ancestor:
                out.add(prefix)
    out.discard(here)
    out.discard("vaelab")  # the root package: a facade for users that no module inside needs
    return out


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
    """``({module: modules it imports at module level}, [(module, local import, line)])``."""
    mods = all_modules()
    names = set(mods)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    local: list[tuple[str, str, int]] = []
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))

        def visit(body: list[ast.stmt], top: bool, mod: str = mod, is_pkg: bool = is_pkg) -> None:
            for node in body:
                if isinstance(node, ast.Import | ast.ImportFrom):
                    for t in _targets(node, mod, is_pkg, names):
                        if top:
                            graph[mod].add(t)
                        else:
                            local.append((mod, t, node.lineno))
                elif isinstance(node, ast.If) and _is_type_checking(node):
                    continue  # never runs
                elif isinstance(node, ast.If | ast.Try | ast.With):
                    blocks = [
                        node.body,
                        getattr(node, "orelse", []),
                        getattr(node, "finalbody", []),
                    ]
                    blocks += [h.body for h in getattr(node, "handlers", [])]
                    for b in blocks:
                        visit(b, top)
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    for child in ast.walk(node):
                        if isinstance(child, ast.Import | ast.ImportFrom):
                            for t in _targets(child, mod, is_pkg, names):
                                local.append((mod, t, child.lineno))

        visit(tree.body, top=True)
    return graph, local


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def dfs(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return [*stack[stack.index(w) :], w]
            if w not in state and (found := dfs(w)) is not None:
                return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := dfs(v)) is not None:
            return found
    return None


def layer_of(module: str) -> int | None:
    """Index in ``LAYERS`` (0 = top) of the longest matching entry; None for the root package."""
    best: tuple[int, int] | None = None
    for i, entries in enumerate(LAYERS):
        for e in entries:
            if (module == e or module.startswith(e + ".")) and (best is None or len(e) > best[1]):
                best = (i, len(e))
    return None if best is None else best[0]


def test_the_graph_reader_sees_imports() -> None:
    """The reader finds known edges (so an empty graph cannot pass the checks below)."""
    graph, _ = import_graph()
    assert "vaelab.models.base" in graph["vaelab.models.vae"]
    assert "vaelab.callbacks" in graph["vaelab.train"]  # a package's __init__ runs too
    assert "vaelab.models" not in graph["vaelab.models.vae"]  # already running then
    assert "vaelab.flows.base" in graph["vaelab.flows.coupling"]
    assert sum(map(len, graph.values())) > 100


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles() -> None:
    graph, _ = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_cycles_through_function_local_imports() -> None:
    """A cycle closed by an import inside a function is still a cycle (it only fails later)."""
    graph, local = import_graph()
    for m, t, _ in local:
        graph[m].add(t)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_module_has_a_layer() -> None:
    missing = [m for m in all_modules() if m != "vaelab" and layer_of(m) is None]
    assert not missing, f"place these modules in LAYERS (tests/unit/test_layering.py): {missing}"


def test_arrows_point_down() -> None:
    graph, _ = import_graph()
    upward = []
    for mod, targets in graph.items():
        for t in targets:
            if (mod, t) in UPWARD_ALLOWED:
                continue
            lm, lt = layer_of(mod), layer_of(t)
            if lm is not None and lt is not None and lt < lm:
                upward.append(f"{mod} -> {t}")
    assert not upward, "imports of a higher layer (see LAYERS):\n" + "\n".join(sorted(upward))


def test_no_function_local_vaelab_imports() -> None:
    """Imports inside functions hide cycles; only those in LOCAL_IMPORTS_ALLOWED (with a reason)."""
    _, local = import_graph()
    hidden = [
        f"{m}:{line} imports {t}" for m, t, line in local if (m, t) not in LOCAL_IMPORTS_ALLOWED
    ]
    assert not hidden, "function-local vaelab imports:\n" + "\n".join(sorted(hidden))


def test_allowances_are_still_needed() -> None:
    graph, local = import_graph()
    stale = [e for e in LOCAL_IMPORTS_ALLOWED if e not in {(m, t) for m, t, _ in local}]
    stale += [(m, t) for m, t in UPWARD_ALLOWED if t not in graph.get(m, ())]
    assert not stale, f"no longer imported, remove from the allowances: {stale}"
