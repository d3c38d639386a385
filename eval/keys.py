"""What a cached group's numbers depend on, as short digests for its cache key: the code of
an optimizer (a baseline's factory with its defaults, or the learned optimizer's update
code), a task's initial parameters and its data arrays.

Code digests hash the parsed source (``ast``: comments, docstrings, formatting and import
statements do not count; what an import brings in is hashed where it is used) of a function, its default arguments, and, transitively, every function, class and
module of this project (``lopt``, ``meta_train``, ``eval``) it refers to by name, plus the
values of the simple constants it reads. A change to any of them (e.g. Muon's ``beta``, the
p grid of Schatten-p, a helper in :mod:`lopt.baselines.dualize`) changes the digest, so a
cached group computed by other code is a miss, not a stale hit. Library code outside the
project (optax, jax) is not hashed: its versions are recorded in every group instead
(:func:`host_record`).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import inspect
import os
import sys
import textwrap
import types

import numpy as np

PROJECT = ("lopt", "meta_train", "eval")


def _own(obj) -> bool:
    name = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", None)
    return (name or "").split(".")[0] in PROJECT


def _normal_source(obj) -> str:
    """``obj``'s source as its AST without docstrings (so comments, docstrings and layout do
    not count); the raw source when it cannot be parsed; its name when it has no source
    (never its repr, which holds a memory address and would differ between processes)."""
    try:
        src = textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):    # e.g. a dataclass's generated __init__: its class counts
        return f"<no source: {getattr(obj, '__qualname__', type(obj).__name__)}>"
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return src
    _drop_imports(tree)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def _drop_imports(tree: ast.AST) -> None:
    """Removes import statements: where a name is imported from does not change what the
    code computes, and the imported code itself is hashed where it is used (so moving a
    module, or importing a function from another path, keeps every digest)."""
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody", "handlers"):
            stmts = getattr(node, field, None)
            if isinstance(stmts, list) and any(isinstance(x, (ast.Import, ast.ImportFrom))
                                               for x in stmts):
                kept = [x for x in stmts if not isinstance(x, (ast.Import, ast.ImportFrom))]
                setattr(node, field, kept or [ast.Pass()])


def _local_imports(code: types.CodeType) -> list:
    """The project modules, functions and classes ``code`` imports inside its body (``from
    lopt.learned.velo import make_velo`` in a function), imported now to read them."""
    import dis
    import importlib
    out, module = [], None
    for ins in dis.get_instructions(code):
        if ins.opname == "IMPORT_NAME":
            name = ins.argval
            module = (importlib.import_module(name)
                      if name.split(".")[0] in PROJECT else None)
            if module is not None:
                out.append(module)
        elif ins.opname == "IMPORT_FROM" and module is not None:
            v = getattr(module, ins.argval, None)
            if (inspect.ismodule(v) or inspect.isfunction(v) or inspect.isclass(v)) and _own(v):
                out.append(v)
    return out


class _Digest:
    """A sha1 over the code reachable from some roots (see the module docstring)."""

    def __init__(self):
        self.h = hashlib.sha1()
        self.seen: set[int] = set()

    def add(self, text: str) -> None:
        self.h.update(text.encode())
        self.h.update(b"\0")

    def visit(self, obj) -> None:
        if isinstance(obj, functools.partial):
            self.visit(obj.func)
            self.add(repr((obj.args, sorted(obj.keywords.items()))))
            return
        if id(obj) in self.seen:
            return
        self.seen.add(id(obj))
        if inspect.ismodule(obj):
            self.add(_normal_source(obj))
            for v in vars(obj).values():
                if (inspect.isfunction(v) or inspect.isclass(v)) and v.__module__ == obj.__name__:
                    self.visit(v)
            return
        self.add(_normal_source(obj))
        if inspect.isclass(obj):
            for v in vars(obj).values():
                v = getattr(v, "__func__", v)
                if inspect.isfunction(v):
                    self.visit(v)
            return
        if inspect.isfunction(obj):
            self.add(repr((obj.__defaults__, obj.__kwdefaults__)))
            self._walk(obj.__code__, obj.__globals__)

    def _walk(self, code: types.CodeType, env: dict) -> None:
        for name in code.co_names:
            v = env.get(name)
            if inspect.ismodule(v) or inspect.isfunction(v) or inspect.isclass(v):
                if _own(v):
                    self.visit(v)
            elif isinstance(v, (bool, int, float, str, tuple, frozenset)):
                self.add(f"{name}={v!r}")
        for v in _local_imports(code):
            self.visit(v)
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                self._walk(c, env)

    def hexdigest(self) -> str:
        return self.h.hexdigest()[:16]


def code_digest(*roots) -> str:
    """16 hex digits naming the code reachable from ``roots`` (functions, classes, modules,
    ``functools.partial`` objects) within this project, with default arguments."""
    d = _Digest()
    for r in roots:
        d.visit(r)
    return d.hexdigest()


@functools.lru_cache(maxsize=None)
def baseline_digest(name: str) -> str:
    """The code of baseline ``name``: its factory (with defaults and everything it calls in
    this project), :class:`lopt.baselines.Baseline` (``build`` and the schedule) and the
    entry's fields that change how it runs (not its grid or description)."""
    from lopt.baselines import BASELINES, Baseline
    b = BASELINES[name]
    d = _Digest()
    d.visit(b.make)
    d.visit(Baseline)
    d.add(repr((b.needs_activations, b.parametrization, b.schedule, b.takes_schedule,
                b.adam_lr_from)))
    return d.hexdigest()


@functools.lru_cache(maxsize=None)
def lo_code_digest(make_lo) -> str:
    """The learned optimizers' update code: everything ``lopt.make_from_config`` reaches (the
    μLO and μVeLO updates, features, μP multipliers, roles) and ``make_lo``, the caller's
    function that builds them (the suite passes its own: this module imports no suite).

    ``make_from_config`` dispatches through the registry's dict (:data:`lopt.learned.registry.
    ARCHS`), which the walk does not enter, so each architecture's config class and functions
    are roots too."""
    import lopt
    try:
        from lopt.learned.registry import ARCHS
    except ImportError:     # older code (eval.stamp): its dispatch imports inside functions,
        ARCHS = {}          # which the walk follows
    archs = [getattr(a, f.name) for a in ARCHS.values() for f in dataclasses.fields(a)]
    return code_digest(lopt.make_from_config, make_lo, *archs)


def _array_digest(leaves) -> str:
    h = hashlib.sha1()
    for x in leaves:
        a = np.ascontiguousarray(np.asarray(x))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


_DATA: dict[tuple[int, ...], tuple[list, str]] = {}


def data_digest(task) -> str:
    """16 hex digits of a task's data arrays (every leaf of ``task.data``: dtype, shape and
    bytes), computed once per process for the same arrays (tasks of one dataset share them)."""
    import jax
    leaves = jax.tree.leaves(task.data)
    ids = tuple(id(x) for x in leaves)
    if ids not in _DATA:        # the leaves are kept with the digest, so their ids stay theirs
        _DATA[ids] = (leaves, _array_digest(leaves))
    return _DATA[ids][1]


@functools.lru_cache(maxsize=None)
def init_digest(task_name: str) -> str:
    """16 hex digits of a task's initial parameters at ``PRNGKey(0)`` (values, shapes and
    tree structure): a change of the init under an unchanged name changes it."""
    import jax
    from meta_train.tasks import get_task
    params = get_task(task_name).init(jax.random.PRNGKey(0))
    leaves, tree = jax.tree.flatten(params)
    return hashlib.sha1((str(tree) + _array_digest(leaves)).encode()).hexdigest()[:16]


def host_record() -> dict:
    """What a group's float bits depend on besides the key: the jax, jaxlib and optax
    versions and the CPU threads XLA may use (see ``eval.suite.host_info``)."""
    import jax
    import optax
    try:
        threads = len(os.sched_getaffinity(0))
    except AttributeError:      # not Linux
        threads = os.cpu_count()
    jaxlib = sys.modules.get("jaxlib")
    return {"jax": jax.__version__, "jaxlib": getattr(jaxlib, "__version__", None),
            "optax": optax.__version__, "cpu_threads": threads}
