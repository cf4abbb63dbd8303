"""The package layout: imports flow one way, and moving code does not change a single output float."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parents[1] / "src" / "crystalframer"
ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CRYSTALFRAMER_SHARED", ROOT.parent / "shared"))
GOLDEN = ROOT / "tests" / "golden" / "layout_batch48.pt"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module file an imported name lives in: the longest prefix that is a module of the package."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> package modules it imports, at module level or inside functions (lazy imports count)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                # "from pkg import sub" imports the submodule when sub is one
                targets = [f"{prefix}.{a.name}" for a in node.names]
            for t in targets:
                if t.split(".")[0] != "crystalframer":
                    continue
                hit = _resolve(t, modules)
                if hit and hit != mod:
                    edges.add(hit)
        graph[mod] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_scanner_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert "crystalframer.data.structures" in graph["crystalframer.models"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_circle_of_modules():
    cycles = _cycles(import_graph())
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def _within(mod: str, *packages: str) -> bool:
    return any(mod == f"crystalframer.{p}" or mod.startswith(f"crystalframer.{p}.") for p in packages)


# (importing package, forbidden packages, allowed exceptions): frames is pure geometry; nn never reaches
# training, the CLI or the data readers, sets, graphs and caches (batch types only); data building never
# imports the networks.
RULES = [
    ("frames", ("nn", "training", "cli", "models", "checkpoint", "data"), ()),
    ("geometry", ("frames", "nn", "training", "cli", "models", "checkpoint", "data"), ()),
    ("nn", ("training", "cli", "models", "checkpoint", "data"), ("data.batch",)),
    ("data", ("nn", "models", "training", "cli", "checkpoint"), ()),
]


@pytest.mark.parametrize("package,forbidden,allowed", RULES, ids=[r[0] for r in RULES])
def test_imports_point_one_way(package, forbidden, allowed):
    bad = sorted(f"{m} -> {t}" for m, ts in import_graph().items() if _within(m, package)
                 for t in ts if _within(t, *forbidden) and not _within(t, *allowed))
    assert not bad, f"{package}/ imports what it must not:\n" + "\n".join(bad)


@pytest.fixture(scope="module")
def reference():
    if not GOLDEN.exists():
        pytest.fail(f"{GOLDEN} is missing: run benchmarks/layout_reference.py on the commit before a move")
    bench = SHARED / "bench" / "batch48.json"
    if not bench.exists():
        pytest.skip(f"{bench} not found: the parity check needs the shared benchmark batch "
                    "(set CRYSTALFRAMER_SHARED to its parent folder)")
    return torch.load(GOLDEN, weights_only=True), json.loads(bench.read_text())


def _names() -> list[str]:
    return list(torch.load(GOLDEN, weights_only=True)["models"]) if GOLDEN.exists() else []


@pytest.mark.parametrize("name", _names())
def test_outputs_are_bit_identical_to_the_reference(reference, name):
    import crystalframer as cf
    from crystalframer.data.structures import to_crystal

    ref, items = reference
    entry = ref["models"][name]
    threads = torch.get_num_threads()
    torch.set_num_threads(ref["threads"])  # the reduction order of matmuls follows the thread count
    try:
        model = getattr(cf, entry["kind"])(**json.loads(entry["config"]))
        model.load_state_dict(entry["state"])
        model.eval()
        with torch.no_grad():
            y = model(model.collate([to_crystal(o) for o in items]))
    finally:
        torch.set_num_threads(threads)
    want = entry["outputs"]
    assert y.shape == want.shape
    assert torch.equal(y, want), f"{name}: max |Δ| = {(y - want).abs().max().item():.3e}"


def _readme_tree() -> set[str]:
    """The module paths of the README's Layout block (indentation gives the folder of each name)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    paths, stack = set(), []
    for line in block.splitlines()[1:]:
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        name = line.split()[0]
        stack = stack[: depth - 1] if depth else []
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
        else:
            paths.add("/".join(stack + [name]))
    return paths


def test_the_readme_layout_lists_every_module_and_no_other():
    tree = {p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")
            if p.name != "__init__.py" or p.parent == SRC}
    listed = _readme_tree()
    assert listed == tree, f"missing from README: {sorted(tree - listed)}; not in the tree: {sorted(listed - tree)}"
