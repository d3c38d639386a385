"""μP parameter roles for arbitrary parameter pytrees.

Every leaf of an optimizee's parameter tree gets one of four roles (Tensor Programs V,
arXiv 2203.03466, Table 3):

* ``input``  -- maps the fixed-size input to the width (first Dense kernel, embeddings);
* ``hidden`` -- both dimensions scale with the width;
* ``output`` -- readout to a fixed-size output (last Dense kernel, LM head);
* ``vector`` -- biases, norm scales/gains, scalars (one dimension or none, or any leaf
  named bias/scale/gamma/beta/gain).

Roles are inferred from leaf paths and shapes, so ordinary Flax linen / nnx models work
without annotation: names first (``embed`` -> input, ``head``/``readout``/``logits`` ->
output), then position in natural path order (first matrix input, last output, the rest
hidden). Users override any of it with ``{regex: role}`` patterns matched against the
``/``-joined path, and can check the result with :func:`describe_roles`. A positional
guess is announced once per leaf (a warning naming the override that pins it).

Fan-in is the product of a kernel's contracted (input) axes: ``prod(shape[:-1])`` for
Dense ``[in, out]`` and Conv ``[*window, in, out]`` kernels; for Flax ``DenseGeneral``
attention kernels, ``d`` for q/k/v ``[d, heads, head_dim]`` and ``heads * head_dim`` for
the output ``[heads, head_dim, d]`` (:func:`leaf_fan_in`).
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any, Mapping

import jax
import numpy as np

ROLES = ("input", "hidden", "output", "vector")

_INPUT_NAMES = re.compile(
    r"(^|/)(embed|embedding|wte|wpe|tok_emb|pos_emb|pos|pos_embed|position_embedding)"
    r"(/|$|_[^/]*)", re.I)
# Flax attention q/k/v DenseGeneral kernels [d, heads, head_dim] (contract axis 0 only).
_QKV_NAMES = re.compile(r"(^|/)(query|key|value|q_proj|k_proj|v_proj|q|k|v)(/|$)", re.I)
# Biases and norm parameters are vectors whatever their rank (DenseGeneral biases are
# [heads, head_dim]).
_VECTOR_NAMES = re.compile(r"(^|/)(bias|scale|gamma|beta|gain)$", re.I)
_warned: set[str] = set()
_OUTPUT_NAMES = re.compile(r"(^|/)(head|lm_head|readout|logits|unembed|classifier)[^/]*",
                           re.I)


def path_str(path) -> str:
    """Joins a jax key path into ``a/b/0/c``."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(str(k.name))
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            parts.append(str(k.key))
        else:
            parts.append(str(k))
    return "/".join(parts)


def _natural_key(s: str):
    # "Dense_10" sorts after "Dense_2": jax flattens dicts in lexicographic key order.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def fan_in(shape) -> int:
    """Fan-in of a kernel in Flax layout (last axis is the output axis)."""
    if len(shape) < 2:
        return 1
    return max(1, int(math.prod(shape[:-1])))


def fan_in_axes(path: str, shape) -> int:
    """How many leading axes of the leaf at ``path`` are contracted with the layer's input
    (its fan-in axes; the rest are output axes): ``ndim - 1`` in Flax layout (Dense
    ``[in, out]``, Conv ``[h, w, in, out]``, attention output ``[heads, head_dim, d]``), and
    1 for attention q/k/v ``DenseGeneral`` kernels ``[d, heads, head_dim]``. The one matrix
    view of every leaf: fan-in, μP multipliers and the matrix baselines (Muon, modular,
    spectral) all read a kernel as ``[prod(shape[:k]), prod(shape[k:])]`` with this ``k``."""
    shape = tuple(shape)
    if len(shape) == 3 and _QKV_NAMES.search(path):
        return 1
    return max(0, len(shape) - 1)


def leaf_fan_in(path: str, shape) -> int:
    """Fan-in of the leaf at ``path``: the product of its :func:`fan_in_axes` (1 for
    scalars and vectors)."""
    shape = tuple(shape)
    if len(shape) < 2:
        return 1
    return max(1, int(math.prod(shape[:fan_in_axes(path, shape)])))


def fan_ins(params: Any) -> Any:
    """A tree like ``params`` with the fan-in (Python int) of every leaf."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    return jax.tree_util.tree_unflatten(
        treedef, [leaf_fan_in(path_str(p), np.shape(x)) for p, x in leaves])


def infer_roles(params: Any, overrides: Mapping[str, str] | None = None) -> Any:
    """Infers the μP role of every leaf.

    Args:
      params: any parameter pytree (dicts, Flax ``FrozenDict``, nnx ``State``, lists).
      overrides: optional ``{regex: role}``; the first pattern that ``re.search``-es a
        leaf's ``/``-joined path decides its role, before any inference.

    Returns:
      A pytree with the structure of ``params`` whose leaves are role strings.
    """
    overrides = dict(overrides or {})
    for pat, role in overrides.items():
        if role not in ROLES:
            raise ValueError(f"role override {pat!r} -> {role!r}: role must be one of {ROLES}")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [path_str(p) for p, _ in leaves]
    roles: list[str | None] = [None] * len(leaves)
    for i, (path, (_, leaf)) in enumerate(zip(paths, leaves)):
        for pat, role in overrides.items():
            if re.search(pat, path):
                roles[i] = role
                break
    matrices = []
    for i, (path, (_, leaf)) in enumerate(zip(paths, leaves)):
        if roles[i] is not None:
            continue
        if np.ndim(leaf) < 2 or _VECTOR_NAMES.search(path):
            roles[i] = "vector"
        elif _INPUT_NAMES.search(path):
            roles[i] = "input"
        elif _OUTPUT_NAMES.search(path):
            roles[i] = "output"
        else:
            matrices.append(i)
    named = set(roles)
    order = sorted(matrices, key=lambda i: _natural_key(paths[i]))
    for i in order:
        roles[i] = "hidden"
    if order and "input" not in named:
        roles[order[0]] = "input"
        _warn_positional(paths[order[0]], "input", "first")
    if len(order) > 1 and "output" not in named:
        roles[order[-1]] = "output"
        _warn_positional(paths[order[-1]], "output", "last")
    return jax.tree_util.tree_unflatten(treedef, roles)


def _warn_positional(path: str, role: str, where: str) -> None:
    if path in _warned:
        return
    _warned.add(path)
    warnings.warn(f"μP role of {path!r} guessed from its position ({where} matrix) as "
                  f"{role!r}; if that is wrong pass role_overrides={{{re.escape(path)!r}: "
                  f"'<role>'}} (roles: {', '.join(ROLES)})", stacklevel=3)


def resolve_roles(params: Any, roles: Any = None, overrides: Mapping[str, str] | None = None):
    """Returns a role tree for ``params``: ``roles`` if given (validated), else inferred."""
    if roles is None:
        return infer_roles(params, overrides)
    want = jax.tree_util.tree_structure(params)
    got_leaves = jax.tree_util.tree_leaves(roles)
    if len(got_leaves) != want.num_leaves:
        raise ValueError(
            f"roles tree has {len(got_leaves)} leaves but params has {want.num_leaves}; "
            "pass roles=None to infer them or build them with lopt.infer_roles(params)")
    bad = [r for r in got_leaves if r not in ROLES]
    if bad:
        raise ValueError(f"unknown role {bad[0]!r}; roles must be one of {ROLES}")
    return jax.tree_util.tree_unflatten(want, got_leaves)


_NUMBERED = re.compile(r"\d")


def model_depth(params: Any, roles: Any) -> int:
    """The depth ``L`` of the 1/depth rule: how many layers of hidden weights the model
    stacks, read from the numbered components of the hidden leaves' paths.

    A hidden leaf belongs to the layer named by its path up to the first component with a
    number in it (``layer_2/w`` -> ``layer_2``, ``block_0/wq`` -> ``block_0``, nnx
    ``blocks/3/mlp/kernel`` -> ``blocks/3``); a leaf with none is a layer of its own. When
    every hidden leaf falls in one numbered group (a Flax ``MLP_0`` holding ``Dense_1`` ...
    ``Dense_4``), the count is taken inside it. So an MLP counts its hidden matrices and a
    transformer its residual blocks, however many matrices each block holds: a 2-block
    transformer has depth 2, not 12."""
    paths = [tuple(path_str(p).split("/"))
             for (p, _), r in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                  jax.tree.leaves(roles)) if r == "hidden"]
    return _count_layers(paths)


def _count_layers(paths: list[tuple[str, ...]]) -> int:
    groups: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    loose = 0
    for p in paths:
        cut = next((i for i, c in enumerate(p[:-1]) if _NUMBERED.search(c)), None)
        if cut is None:
            loose += 1
        else:
            groups.setdefault(p[:cut + 1], []).append(p[cut + 1:])
    if len(groups) == 1:
        (inner,) = groups.values()
        numbered = [p for p in inner if any(_NUMBERED.search(c) for c in p[:-1])]
        return loose + (_count_layers(inner) if len(numbered) > 1 else 1)
    return loose + len(groups)


def lr_multipliers(params: Any, roles: Any, mup: bool = True, base: float = 1.0,
                   depth_ref: int = 0) -> Any:
    """Static per-leaf LR multipliers: ``base/fan_in`` for hidden leaves under μP (``base``:
    the μP base width, 1 = absolute ``1/fan_in``), else 1. ``depth_ref > 0`` further scales
    hidden leaves by ``min(1, depth_ref / L)``, ``L`` the model's depth
    (:func:`model_depth`: hidden layers of an MLP, residual blocks of a transformer).

    Returns a pytree of Python floats (static constants, never traced).
    """
    num_layers = model_depth(params, roles) if depth_ref else 0
    depth = min(1.0, depth_ref / num_layers) if (depth_ref and num_layers) else 1.0

    def one(role, fi):
        return float(base) * depth / fi if (mup and role == "hidden") else 1.0
    return jax.tree.map(one, roles, fan_ins(params))


def readout_multipliers(params: Any, roles: Any, mup: bool = True, base: float = 1.0,
                        in_model: bool = False) -> Any:
    """The μP forward multiplier ``base/fan_in`` of every output leaf that the optimizer
    applies (1 elsewhere, and everywhere when ``mup`` is False). ``in_model``: the model
    already multiplies its readout by ``1/fan_in``, so only the factor ``base`` remains.

    Returns a pytree of Python floats.
    """
    def one(role, fi):
        if not (mup and role == "output"):
            return 1.0
        return float(base) if in_model else float(base) / fi
    return jax.tree.map(one, roles, fan_ins(params))


def step_multipliers(roles: Any = None, overrides: Mapping[str, str] | None = None, *,
                     mup: bool = True, base: float = 1.0, depth_ref: int = 0,
                     in_model: bool = False):
    """A function ``params -> (lr multipliers, readout conversions)`` for a learned optimizer,
    computed once per parameter structure (names and shapes; a guessed role warns once) and
    reused at every later update or trace.

    The readout conversion is its μP forward multiplier ``b/fan_in`` as far as the model does
    not carry it: all of it for plain models, the factor ``b`` for μP models (``in_model``).
    """
    cache: dict = {}

    def get(params):
        key = (jax.tree.structure(params), tuple(np.shape(x) for x in jax.tree.leaves(params)))
        if key not in cache:
            role_tree = resolve_roles(params, roles, overrides)
            cache[key] = (lr_multipliers(params, role_tree, mup, base=base, depth_ref=depth_ref),
                          readout_multipliers(params, role_tree, mup, base=base,
                                              in_model=in_model))
        return cache[key]
    return get


def describe_roles(params: Any, roles: Any = None,
                   overrides: Mapping[str, str] | None = None, mup: bool = True, *,
                   lo: Any = None) -> str:
    """A human-readable table: path, shape, role and LR multiplier of every leaf.

    Args:
      lo: whose multipliers to show: a learned optimizer (shipped name or path) or its
        ``LOConfig`` (its μP flag, base width and depth rule); None: the classic μLO's
        absolute ``1/fan_in`` (or SP with ``mup=False``).
    """
    base, depth_ref = 1.0, 0
    if lo is not None:
        if not hasattr(lo, "mup_base"):
            from lopt.checkpoint import load_theta
            lo = load_theta(lo)[1]
        mup, base, depth_ref = lo.mup, lo.mup_base, lo.depth_ref
    roles = resolve_roles(params, roles, overrides)
    mults = lr_multipliers(params, roles, mup, base=base, depth_ref=depth_ref)
    rows = []
    for (path, p), r, m in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                               jax.tree_util.tree_leaves(roles),
                               jax.tree_util.tree_leaves(mults)):
        rows.append((path_str(path), str(tuple(np.shape(p))), r, f"{m:.3g}"))
    w = [max(len(x[j]) for x in rows + [("path", "shape", "role", "lr_mult")]) for j in range(4)]
    lines = ["  ".join(h.ljust(w[j]) for j, h in enumerate(("path", "shape", "role", "lr_mult")))]
    lines += ["  ".join(c.ljust(w[j]) for j, c in enumerate(row)) for row in rows]
    if mup and depth_ref:
        depth = model_depth(params, roles)
        lines.append(f"depth {depth} (model_depth): hidden steps x min(1, {depth_ref}/{depth})"
                     f" = {min(1.0, depth_ref / depth) if depth else 1.0:.3g}")
    return "\n".join(lines)
