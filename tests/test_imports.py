"""The project's import graph, read from the source (nothing is imported): no cycle among
its modules, and imports go one way, ``lopt`` <- ``meta_train`` <- ``eval``.

Every ``import`` / ``from ... import`` counts, also inside functions and ``if`` blocks, and
relative ones. ``from pkg import name`` is an edge to the submodule ``pkg.name`` where that is
a module, else to ``pkg`` (its ``__init__.py``); ``import a.b`` is an edge to ``a.b``. The
parent packages Python runs first (``a`` for ``import a.b``) are not edges: a package's
``__init__.py`` re-exports its submodules, so counting them would make every re-export a
cycle. A submodule that imports a name from its own package's ``__init__`` is an edge to it,
so that cycle (a half-initialized package at import time) is caught.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("lopt", "meta_train", "eval")
# (importer, imported): a module of the first package may not import one of the second
FORBIDDEN = (("lopt", "meta_train"), ("lopt", "eval"), ("meta_train", "eval"))


def project_modules(root: Path = ROOT, packages=PACKAGES) -> dict[str, Path]:
    """Dotted name -> file of every module under ``packages`` (a package is its
    ``__init__.py``)."""
    out = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = f.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _known(name: str, modules) -> str | None:
    """``name`` if it is a project module, else its longest prefix that is (``lopt.x.attr``
    -> ``lopt.x``); None outside the project."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def imports_of(name: str, file: Path, modules) -> set[str]:
    """The project modules that module ``name`` (source ``file``) imports."""
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            out.update(_known(a.name, modules) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:      # relative: from . import x, from ..a import b
                parts = package.split(".")
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in modules else _known(base, modules))
    out.discard(None)
    out.discard(name)
    return out


def import_graph(root: Path = ROOT, packages=PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    modules = project_modules(root, packages)
    return {m: imports_of(m, f, modules) for m, f in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first, in sorted order)."""
    state: dict[str, int] = {}        # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def _top(m: str) -> str:
    return m.split(".")[0]


def test_the_graph_holds_every_module_and_the_known_edges():
    graph = import_graph()
    assert {"lopt", "lopt.learned.registry", "meta_train.loop", "eval.keys"} <= set(graph)
    assert "lopt.learned.mulo" in graph["lopt.learned.registry"]        # from pkg import sub
    assert "lopt.io.checkpoint" in graph["meta_train.loop"]             # inside a function too
    assert "lopt.learned.velo" in graph["lopt.learned"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_go_one_way():
    bad = sorted((m, n) for m, targets in import_graph().items() for n in targets
                 if (_top(m), _top(n)) in FORBIDDEN)
    assert not bad, "imports against lopt <- meta_train <- eval: " + ", ".join(
        f"{m} imports {n}" for m, n in bad)


def test_the_check_finds_a_cycle_through_a_function_import_and_a_package_init(tmp_path):
    files = {
        "pkg/__init__.py": "from pkg.a import f\n",
        "pkg/a.py": "def f():\n    from . import b\n    return b\n",
        "pkg/b.py": "import os\nimport pkg.c\n",
        "pkg/c.py": "from pkg import f\n",                 # a name: the package's __init__
        "pkg/sub/__init__.py": "",
        "pkg/sub/d.py": "from .. import b\nfrom ..c import x\n",
        "other/__init__.py": "",
    }
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    graph = import_graph(tmp_path, ("pkg", "other"))
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"},
                     "pkg.c": {"pkg"}, "pkg.sub": set(), "pkg.sub.d": {"pkg.b", "pkg.c"},
                     "other": set()}
    assert find_cycle(graph) == ["pkg", "pkg.a", "pkg.b", "pkg.c", "pkg"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


MAX_FUNCTION_LINES = 80


def long_functions(package: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:line name (n lines)`` for each function of ``package`` longer than ``limit``."""
    out = []
    for file in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{file.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_every_eval_function_fits_on_a_screen():
    """eval/ reads as small steps (the suite is a plan, then its execution): no function
    longer than 80 lines."""
    assert long_functions("eval") == []
    assert long_functions("eval", limit=60)      # the check sees functions at all
