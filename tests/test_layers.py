"""The package's imports run one way: no module imports itself round a circle, and no part imports a part of a
later layer (`onelora.LAYERS`). Imports are read from the source (`ast`), those inside functions included: a lazy
import hides a circle from Python's import machinery, not from a reader."""

from __future__ import annotations

import ast
from pathlib import Path

import onelora

SRC = Path(onelora.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (a package by its own name)."""
    mods = {}
    for f in SRC.rglob("*.py"):
        name = ".".join(f.relative_to(SRC.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (`from . import x` names module x; a module's own package's
    `__init__`, which Python runs first anyway, is not an edge)."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        package = m if f.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            edges[m] |= {n for n in names if n in mods and n != m and not m.startswith(n + ".")}
    return edges


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _layer(module: str) -> int | None:
    part = module.split(".")[1] if "." in module else None
    return next((i for i, parts in enumerate(onelora.LAYERS) if part in parts), None)


def test_the_reader_finds_circles_and_lazy_imports(tmp_path: Path) -> None:
    """The reader itself: a circle closed by an import inside a function, and a relative import two levels up."""
    edges = {"p.a": {"p.b"}, "p.b": {"p.q.c"}, "p.q.c": {"p.a"}, "p.d": {"p.a"}}
    assert _circles(edges) == [["p.a", "p.b", "p.q.c"]]
    pkg = tmp_path / "p"
    (pkg / "q").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "q" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .q import c\n")
    (pkg / "q" / "c.py").write_text("def f():\n    from .. import a\n")
    mods = {
        "p": pkg / "__init__.py",
        "p.q": pkg / "q" / "__init__.py",
        "p.a": pkg / "a.py",
        "p.q.c": pkg / "q" / "c.py",
    }
    edges = _imports(mods)
    assert edges["p.a"] == {"p.q", "p.q.c"} and edges["p.q.c"] == {"p.a"}  # its own package p is no edge
    assert _circles(edges) == [["p.a", "p.q.c"]]


def test_no_import_circles() -> None:
    circles = _circles(_imports(_modules()))
    assert not circles, "import circles (every arrow must run one way): " + "; ".join(" <-> ".join(c) for c in circles)


def test_every_part_has_a_layer() -> None:
    parts = {m.split(".")[1] for m in _modules() if "." in m}
    placed = {p for layer in onelora.LAYERS for p in layer}
    assert parts == placed, f"parts without a layer in onelora.LAYERS: {sorted(parts - placed)}; " + (
        f"named but absent: {sorted(placed - parts)}"
    )


def test_imports_never_reach_a_later_layer() -> None:
    upward = sorted(
        f"{m} -> {n}"
        for m, targets in _imports(_modules()).items()
        for n in targets
        if _layer(m) is not None and _layer(n) is not None and _layer(n) > _layer(m)
    )
    assert not upward, "imports of a later layer (onelora.LAYERS): " + ", ".join(upward)


def test_the_library_api_holds_no_familys_code() -> None:
    """A family of methods with layers of its own (HF peft's `hf_*`) lives in its module and its hooks: api.py
    names none of them."""
    from onelora.peft.registry import FAMILIES

    source = (SRC / "peft" / "api.py").read_text()
    assert FAMILIES and not [prefix for prefix in FAMILIES if prefix in source]
    assert not [m for m in _imports(_modules())["onelora.peft.api"] if m.rpartition(".")[2] in ("hf", "hf_format")]
