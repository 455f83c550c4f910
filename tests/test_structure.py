"""Layers only look down: the import graph of llmzoo/ (imports inside functions counted: a deferred
import hides a cycle, it does not remove it) has no cycle, and shared code names no family."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "llmzoo"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _targets(name: str, node: ast.AST) -> list[str]:
    """llmzoo modules an import statement in module `name` loads."""
    if isinstance(node, ast.Import):
        out = [a.name for a in node.names]
    else:
        base = name.split(".")
        if node.level:
            is_pkg = MODULES[name].name == "__init__.py"
            base = base[: len(base) - node.level + is_pkg]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        out = [prefix, *(f"{prefix}.{a.name}" for a in node.names)]
    return [m for m in out if m in MODULES]


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """(module → the llmzoo modules it imports, [(module, line, target) of imports inside functions])."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    deferred = []

    def visit(name: str, node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for t in _targets(name, child):
                    # a submodule runs its parents' __init__ first: an edge to an ancestor is no cycle
                    if t != name and not name.startswith(t + "."):
                        graph[name].add(t)
                if in_function:
                    what = child.module if isinstance(child, ast.ImportFrom) else child.names[0].name
                    deferred.append((name, child.lineno, "." * (getattr(child, "level", 0) or 0) + (what or "")))
            visit(name, child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    for name, path in MODULES.items():
        visit(name, ast.parse(path.read_text()), False)
    return graph, deferred


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), leaving out a package and its
    own child re-exporting each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 and not (len(comp) == 2 and (comp[0].startswith(comp[1] + ".") or comp[1].startswith(comp[0] + "."))):
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            connect(v)
    return out


def test_import_graph_has_no_cycle():
    graph, deferred = _imports()
    cycles = _cycles(graph)
    assert not cycles, "import cycles (imports inside functions counted):\n" + "\n".join(", ".join(c) for c in cycles)
    print(f"{len(MODULES)} modules, {sum(map(len, graph.values()))} imports between them, "
          f"{len(deferred)} imports inside functions")


def test_no_llmzoo_import_is_deferred():
    """Imports inside functions are for optional or heavy third-party packages (transformers,
    tokenizers, tqdm, the hub client), never to hide an llmzoo dependency."""
    _, deferred = _imports()
    ours = [(m, line, t) for m, line, t in deferred if t.startswith(".") or t.startswith("llmzoo")]
    assert not ours, f"llmzoo imports inside functions: {ours}"


# components and the schema: what a layer below the model may not import
BELOW_MODEL = ("llmzoo.registry", "llmzoo.config", "llmzoo.norms", "llmzoo.positions", "llmzoo.attention",
               "llmzoo.mlp", "llmzoo.moe", "llmzoo.block")
ABOVE = ("llmzoo.hf", "llmzoo.parity", "llmzoo.zoo", "llmzoo.builder", "llmzoo.parallel.sharding",
         "llmzoo.parallel.loading", "llmzoo.parallel.memory", "llmzoo.parallel.checkpoint")


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_components_look_down():
    """Nothing below the model reaches hf, parity, the zoo, the builder or parallel's sharding code;
    components may use parallel's plan vocabulary (a leaf)."""
    graph, _ = _imports()
    bad = {m: sorted(t for t in _reach(graph, m) if t.startswith(ABOVE)) for m in BELOW_MODEL if m in graph}
    assert not any(bad.values()), f"lower layers reach upper ones: { {m: t for m, t in bad.items() if t} }"
    assert _reach(graph, "llmzoo.parallel.plan") <= {"llmzoo.parallel"}, "the plan vocabulary must stay a leaf"
    # the schema finds components in the registry; it imports none of them
    assert _reach(graph, "llmzoo.config") <= {"llmzoo.registry", "llmzoo.errors"}, _reach(graph, "llmzoo.config")


SHARED = ("llmzoo/hf/loader.py", "llmzoo/hf/export.py", "llmzoo/hf/rules.py",
          "llmzoo/parity.py", "llmzoo/cli.py", "llmzoo/parallel")


def test_shared_code_names_no_family():
    """The loader, exporter, parity and parallel code never name a family in code (string constants
    other than docstrings): families register their sources, rules and verify rows themselves."""
    families = {p.name for p in (ROOT / "configs").iterdir() if p.is_dir()}
    families |= {f.split("-")[0] for f in families if len(f.split("-")[0]) > 3}
    hits = []
    for entry in SHARED:
        for path in sorted((ROOT / entry).rglob("*.py")) if (ROOT / entry).is_dir() else [ROOT / entry]:
            tree = ast.parse(path.read_text())
            docs = {id(n.body[0].value) for n in ast.walk(tree)
                    if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                    and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
            for n in ast.walk(tree):
                if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs:
                    words = set(n.value.lower().replace("_", "-").replace(".", " ").replace("/", " ").split())
                    hits += [f"{path.relative_to(ROOT)}:{n.lineno}: {w!r}" for w in sorted(words)
                             if any(w == f or w.startswith(f + "-") for f in families)]
    assert not hits, "family names in shared code:\n" + "\n".join(hits)
