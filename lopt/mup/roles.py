"""μP parameter roles for arbitrary parameter pytrees.

Every leaf of an optimizee's parameter tree gets one of four roles (Tensor Programs V,
arXiv 2203.03466, Table 3):

* ``input``  -- maps the fixed-size input to the width (first Dense kernel, embeddings);
* ``hidden`` -- both dimensions scale with the width;
* ``output`` -- readout to a fixed-size output (last Dense kernel, LM head);
* ``vector`` -- biases, norm scales/gains, scalars, empty leaves (one dimension or none,
  or any leaf named bias/scale/gamma/beta/gain).

Roles are inferred from leaf paths and shapes, so ordinary Flax linen / nnx models work
without annotation:

1. names first: ``embed``/``wte``/... -> input, ``head``/``readout``/``logits``/... ->
   output (in a multi-layer ``head/`` or ``classifier/`` only the last matrix is the
   readout; the others are hidden);
2. then position: the first matrix is the input and the last the readout, in the model's
   creation order where the container keeps it (a linen params dict, or any dict, keeps
   the order its modules were created in), else in natural path order (``Dense_10`` after
   ``Dense_2``). jax rebuilds dicts in sorted key order (inside ``jit``, ``tree.map``, nnx
   ``State``), so a dict in sorted order tells nothing; the creation order of a parameter
   structure, once seen (``opt.init(params)``, ``infer_roles``, ``mup_init_params`` on the
   model's own params), is remembered for that structure (names and shapes);
3. tied embeddings: a model with a named input embedding and no readout leaf (its last
   matrix maps back into the width inside a block) reads its logits from the
   embedding. The embedding keeps the ``input`` role: in the ``1/fan_in``-multiplier form
   of μP (Tensor Programs V, Table 3 as used here, and the mup package's
   ``MuSharedReadout``) input and output weights share the same init and Adam-like LR, so
   a tied weight needs no compromise; only the logits need the ``1/d`` forward multiplier,
   which the model must apply (the optimizer cannot emulate it on a shared weight).
   :func:`describe_roles` marks such a leaf ``tied``;
4. stacked layers (``nn.scan`` with ``variable_axes={"params": 0}``: kernels ``[L, d, d]``,
   biases and norms ``[L, d]``) are read per layer: fan-in ``d``, hidden, ``L`` layers.

A positional decision is a guess when the order it rests on is alphabetical (names of
different kinds in a dict without creation order, e.g. ``conv_init`` vs
``BottleneckResNetBlock_0``); numbered siblings (``Dense_2`` / ``Dense_10``, ``layers/3``)
are ordered by their numbers. A guess on a model with more than
:data:`MAX_GUESSED_MATRICES` matrices raises :class:`RoleInferenceError` with the
:func:`describe_roles` table and the override that pins it; on smaller models it warns
once per leaf. Users override any of it with ``{regex: role}`` patterns matched against
the ``/``-joined path.

Fan-in is the product of a kernel's contracted (input) axes: ``prod(shape[:-1])`` for
Dense ``[in, out]`` and Conv ``[*window, in, out]`` kernels; for Flax ``DenseGeneral``
attention kernels, ``d`` for q/k/v ``[d, heads, head_dim]`` and ``heads * head_dim`` for
the output ``[heads, head_dim, d]``; ``d`` for Gemma-style einsum kernels
(``qkv_einsum/w`` ``[3, heads, d, head_dim]``, ``kv_einsum``, ``q_einsum``,
``gating_einsum`` ``[2, d, hidden]``); and that of one layer for stacked kernels
(:func:`fan_ins`).
"""

from __future__ import annotations

import math
import os
import re
import sys
import warnings
from collections.abc import Mapping as AbcMapping
from typing import Any, Mapping, NamedTuple

import jax
import numpy as np

ROLES = ("input", "hidden", "output", "vector")
MATRIX_ROLES = ("input", "hidden", "output")
# "A few" matrices: up to this many, a guessed position only warns (the Flax CNN client's
# Conv_0, Conv_1, Dense_0 is ordered alphabetically, and correctly).
MAX_GUESSED_MATRICES = 4


class RoleError(ValueError):
    """A role tree, an override or an inference that cannot be used."""


class RoleOverrideError(RoleError):
    """A ``role_overrides`` entry with an invalid regex or an unknown role."""


class RoleInferenceError(RoleError):
    """The roles of a model could only be guessed; the message holds the
    :func:`describe_roles` table and the ``role_overrides`` that pins them."""


_INPUT_NAMES = re.compile(
    r"(^|/)(embed|embedding|wte|wpe|tok_emb|pos_emb|pos|pos_embed|position_embedding"
    r"|embedder|input_embedding)(/|$|_[^/]*)", re.I)
# Flax attention q/k/v DenseGeneral kernels [d, heads, head_dim] (contract axis 0 only).
_QKV_NAMES = re.compile(r"(^|/)(query|key|value|q_proj|k_proj|v_proj|q|k|v)(/|$)", re.I)
# Gemma-style einsum kernels contract axis -2 only: qkv_einsum [3, heads, d, head_dim],
# kv_einsum [2, kv_heads, d, head_dim], q_einsum [heads, d, head_dim], gating_einsum
# [2, d, hidden] (google-deepmind/gemma, gemma/modules.py).
_EINSUM_NAMES = re.compile(r"(^|/)(qkv_einsum|kv_einsum|q_einsum|gating_einsum)(/|$)", re.I)
# Biases and norm parameters are vectors whatever their rank (DenseGeneral biases are
# [heads, head_dim]).
_VECTOR_NAMES = re.compile(r"(^|/)(bias|scale|gamma|beta|gain)$", re.I)
_warned: set[str] = set()
_OUTPUT_NAMES = re.compile(r"(^|/)(head|lm_head|readout|logits|unembed|classifier)[^/]*",
                           re.I)
# nnx State leaves are Variables whose array sits under a trailing "value" key.
_NNX_VALUE = re.compile(r"/(value|raw_value)$")
_POSITIONAL = re.compile(r"pos|position|wpe", re.I)
_NUMBERED = re.compile(r"\d")


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


def _skeleton(s: str) -> str:
    return re.sub(r"\d+", "#", s)


def fan_in(shape) -> int:
    """Fan-in of a kernel in Flax layout (last axis is the output axis)."""
    if len(shape) < 2:
        return 1
    return max(1, int(math.prod(shape[:-1])))


def fan_in_axes(path: str, shape) -> int:
    """How many leading axes of the leaf at ``path`` are contracted with the layer's input
    (its fan-in axes; the rest are output axes): ``ndim - 1`` in Flax layout (Dense
    ``[in, out]``, Conv ``[h, w, in, out]``, attention output ``[heads, head_dim, d]``), and
    1 for attention q/k/v ``DenseGeneral`` kernels ``[d, heads, head_dim]``. The matrix
    view the matrix baselines (Muon, modular, spectral) take of a kernel:
    ``[prod(shape[:k]), prod(shape[k:])]`` with this ``k`` (stacked and einsum kernels,
    whose contracted axis is not a leading one, have their fan-in from :func:`fan_ins`)."""
    shape = tuple(shape)
    if len(shape) == 3 and _QKV_NAMES.search(_NNX_VALUE.sub("", path)):
        return 1
    return max(0, len(shape) - 1)


def leaf_fan_in(path: str, shape) -> int:
    """Fan-in of one layer's leaf at ``path``: the product of its :func:`fan_in_axes`, or
    the contracted axis ``shape[-2]`` of a Gemma-style einsum kernel (1 for scalars and
    vectors). A stacked leaf's fan-in is that of one layer (:func:`fan_ins`)."""
    shape = tuple(shape)
    if len(shape) < 2:
        return 1
    if len(shape) >= 3 and _EINSUM_NAMES.search(path):
        return max(1, int(shape[-2]))
    return max(1, int(math.prod(shape[:fan_in_axes(path, shape)])))


class _Leaf(NamedTuple):
    path: str      # the jax key path, "/"-joined
    name: str      # the path without nnx's trailing "/value"
    shape: tuple   # the shape of one layer (a stacked leaf without its layer axis)
    size: int
    stack: int     # layers stacked on axis 0 (nn.scan), 0 if not stacked
    stack_root: str  # the stacked subtree's path ("" if not stacked)
    key: tuple     # order: ((rank, component, ordered?), ...) from the root


# Creation orders of parameter structures seen with one: (treedef, shapes) -> {path: key}.
_ORDERS: dict = {}
_MAX_ORDERS = 64


def _order_keys(params) -> tuple[dict, bool]:
    """``({leaf path: order key}, whether any dict kept a creation order)``. A dict whose
    keys are not in sorted order keeps the order its entries were created in; a dict in
    sorted order (as jax rebuilds every dict) is ordered naturally (``Dense_2`` before
    ``Dense_10``); sequences keep their index order."""
    out: dict = {}
    kept = [False]

    def walk(node, prefix):
        if isinstance(node, AbcMapping):
            keys = list(node.keys())
            try:
                ordered = keys != sorted(keys)
            except TypeError:
                ordered = True
            kept[0] |= ordered
            if not ordered:
                keys = sorted(keys, key=lambda k: _natural_key(str(k)))
            for r, k in enumerate(keys):
                walk(node[k], prefix + ((r, str(k), ordered),))
            return
        kids = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)[0]
        if len(kids) == 1 and not kids[0][0]:
            out["/".join(c[1] for c in prefix)] = prefix
            return
        for r, (kp, child) in enumerate(kids):
            walk(child, prefix + ((r, path_str(kp), True),))
    walk(params, ())
    return out, kept[0]


def _stacked_roots(items: list[tuple[str, tuple]]) -> dict[str, int]:
    """``{subtree path: L}`` for the maximal subtrees that hold stacked layers: at least two
    leaves, every one of rank >= 2 with the same leading size ``L``, and a bias, scale or
    other vector-named leaf among them ([L, d]: a vector per layer), or an ``nn.scan``
    module name (``ScanBlock_0``) on the path."""
    found: dict[str, int] = {}

    def check(prefix: tuple, members: list):
        if len(members) >= 2:
            shapes = [s for _, s in members]
            lead = {s[0] if len(s) >= 2 else None for s in shapes}
            if None not in lead and len(lead) == 1 and (
                    any(_VECTOR_NAMES.search(n) for n, _ in members)
                    or any("scan" in c.lower() for c in prefix)):
                found["/".join(prefix)] = lead.pop()
                return
        children: dict = {}
        for n, s in members:
            parts = n.split("/")
            if len(parts) > len(prefix) + 1:
                children.setdefault(parts[len(prefix)], []).append((n, s))
        for c, ms in children.items():
            check(prefix + (c,), ms)
    check((), items)
    return found


def _analyse(params) -> tuple[list[_Leaf], Any]:
    """Every leaf of ``params`` (in jax's flatten order) with its name, per-layer shape,
    stacking and order key; and the treedef."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [path_str(p) for p, _ in flat]
    shapes = [tuple(np.shape(x)) for _, x in flat]
    keys, kept = _order_keys(params)
    memo = (treedef, tuple(shapes))
    if kept:
        _ORDERS.pop(memo, None)
        _ORDERS[memo] = keys
        while len(_ORDERS) > _MAX_ORDERS:
            _ORDERS.pop(next(iter(_ORDERS)))
    elif memo in _ORDERS:
        keys = _ORDERS[memo]
    names = [leaf_name(p) for p in paths]
    roots = _stacked_roots(list(zip(names, shapes)))
    leaves = []
    for path, name, shape in zip(paths, names, shapes):
        root = next((r for r in roots if r == "" or name.startswith(r + "/")), None)
        stack = roots[root] if root is not None else 0
        key = keys.get(path) or tuple((0, c, False) for c in path.split("/"))
        leaves.append(_Leaf(path, name, shape[1:] if stack else shape,
                            int(np.prod(shape)) if shape else 1, stack, root or "", key))
    return leaves, treedef


def fan_ins(params: Any) -> Any:
    """A tree like ``params`` with the fan-in (Python int) of every leaf: that of one layer
    for stacked kernels (``[L, d, d]``: ``d``)."""
    leaves, treedef = _analyse(params)
    return jax.tree_util.tree_unflatten(treedef, [leaf_fan_in(x.name, x.shape) for x in leaves])


def _compile_overrides(overrides: Mapping[str, str] | None) -> list:
    out = []
    for pat, role in dict(overrides or {}).items():
        if role not in ROLES:
            raise RoleOverrideError(f"role override {pat!r} -> {role!r}: role must be one of "
                                    f"{ROLES}")
        try:
            out.append((re.compile(pat), role))
        except (re.error, TypeError) as e:
            raise RoleOverrideError(
                f"role_overrides pattern {pat!r} is not a valid regular expression ({e}); "
                f"for a literal path use re.escape, e.g. {re.escape(str(pat))!r}") from None
    return out


def _named_role(leaf: _Leaf) -> str | None:
    if leaf.size == 0:                # an empty leaf holds no matrix (and takes no position)
        return "vector"
    if len(leaf.shape) < 2 or _VECTOR_NAMES.search(leaf.name):
        return "vector"
    if _INPUT_NAMES.search(leaf.name):
        return "input"
    if _OUTPUT_NAMES.search(leaf.name):
        return "output"
    return None


def _trusted(a: _Leaf, b: _Leaf) -> bool:
    """Whether the order of two leaves is known: they part in a dict that kept its creation
    order (or a sequence), or at siblings that differ only in their numbers."""
    for (_, ca, ordered), (_, cb, _) in zip(a.key, b.key):
        if ca != cb:
            return ordered or _skeleton(ca) == _skeleton(cb)
    return True


def _rank(leaf: _Leaf) -> tuple:
    return tuple(r for r, _, _ in leaf.key)


def _pick(leaves: list[_Leaf], cands: list[int], last: bool) -> tuple[int, bool]:
    """The first (or last) of ``cands`` in order, and whether that is a guess."""
    order = sorted(cands, key=lambda i: _rank(leaves[i]))
    i = order[-1] if last else order[0]
    return i, not all(_trusted(leaves[i], leaves[j]) for j in cands if j != i)


def _out_size(leaf: _Leaf) -> int:
    return int(math.prod(leaf.shape[fan_in_axes(leaf.name, leaf.shape):]))


def _in_block(leaf: _Leaf) -> bool:
    """The leaf sits in a numbered block below its own module (``h_3/mlp/kernel``, nnx
    ``blocks/3/attn/out/kernel``), not in a numbered layer of its own (``Dense_3/kernel``,
    ``layer_3/w``, ``layers/3/kernel``)."""
    parts = leaf.name.split("/")
    cut = next((i for i, c in enumerate(parts[:-1]) if _NUMBERED.search(c)), None)
    return cut is not None and cut < len(parts) - 2


def leaf_name(path: str) -> str:
    """A leaf's ``/``-joined path without nnx's trailing ``/value`` (the Variable's array)."""
    return _NNX_VALUE.sub("", path)


def is_embedding_table(path: str, shape) -> bool:
    """An embedding table ``[vocab, d]`` by name (Flax ``nn.Embed``'s ``embedding``, ``wte``,
    ``pos``, Gemma's ``input_embedding``...), not a Dense kernel named ``embed/kernel``."""
    name = leaf_name(path)
    return (len(tuple(shape)) == 2 and bool(_INPUT_NAMES.search(name))
            and not name.endswith("kernel"))


def _embedding_tables(leaves, roles) -> list[int]:
    return [i for i, x in enumerate(leaves) if roles[i] == "input" and not x.stack
            and is_embedding_table(x.name, x.shape)]


def _heads(leaves, roles, fixed, guesses) -> None:
    """In a multi-layer ``head/`` or ``classifier/`` only the last matrix is the readout."""
    groups: dict[str, list[int]] = {}
    for i, x in enumerate(leaves):
        m = _OUTPUT_NAMES.search(x.name)
        if roles[i] == "output" and not x.stack and m and i not in fixed:
            groups.setdefault(x.name[:m.end()], []).append(i)
    for members in groups.values():
        if len(members) > 1:
            last, guessed = _pick(leaves, members, last=True)
            for j in members:
                roles[j] = "output" if j == last else "hidden"
            if guessed:
                guesses[last] = "last matrix of its head"


def _assign(leaves: list[_Leaf], overrides: list) -> tuple[list, dict, dict]:
    """``(roles, guesses {index: where}, notes {index: note})`` of every leaf."""
    roles: list = [next((r for pat, r in overrides if pat.search(x.path)), None)
                   for x in leaves]
    guesses: dict[int, str] = {}
    fixed = {i for i, r in enumerate(roles) if r is not None}
    for i, x in enumerate(leaves):
        if roles[i] is None:
            roles[i] = _named_role(x)
    _heads(leaves, roles, fixed, guesses)
    cands = [i for i, x in enumerate(leaves) if roles[i] is None and not x.stack]
    for i, x in enumerate(leaves):
        if roles[i] is None:
            roles[i] = "hidden"
    present = {r for i, r in enumerate(roles) if i not in cands}
    notes: dict[int, str] = {}
    if cands and "input" not in present:
        i, guessed = _pick(leaves, cands, last=False)
        roles[i] = "input"
        cands.remove(i)
        if guessed:
            guesses[i] = "first matrix"
    if "output" in present:
        return roles, guesses, notes
    tables = _embedding_tables(leaves, roles)
    if cands:
        i, guessed = _pick(leaves, cands, last=True)
        width = {leaves[t].shape[-1] for t in tables}
        if not (width and _out_size(leaves[i]) in width and _in_block(leaves[i])):
            roles[i] = "output"
            if guessed:
                guesses[i] = "last matrix"
            return roles, guesses, notes
    tied = [t for t in tables if not _POSITIONAL.search(leaves[t].name)] or tables[:1]
    for t in tied:
        notes[t] = "tied: input and readout"
    return roles, guesses, notes


def _infer(params: Any, overrides: Mapping[str, str] | None = None):
    """``(leaves, treedef, roles, notes)``; warns or raises on guesses (module docstring)."""
    compiled = _compile_overrides(overrides)
    leaves, treedef = _analyse(params)
    roles, guesses, notes = _assign(leaves, compiled)
    if guesses:
        matrices = sum(r in MATRIX_ROLES for r in roles)
        if matrices > MAX_GUESSED_MATRICES:
            raise RoleInferenceError(_guess_message(leaves, roles, guesses, notes))
        for i, where in guesses.items():
            _warn_positional(leaves[i].path, roles[i], where)
    return leaves, treedef, roles, notes


def infer_roles(params: Any, overrides: Mapping[str, str] | None = None) -> Any:
    """Infers the μP role of every leaf (see the module docstring for the rules).

    Args:
      params: any parameter pytree (dicts, Flax ``FrozenDict``, nnx ``State``, lists). The
        model's own params (``model.init(...)["params"]``) carry its creation order.
      overrides: optional ``{regex: role}``; the first pattern that ``re.search``-es a
        leaf's ``/``-joined path decides its role, before any inference.

    Returns:
      A pytree with the structure of ``params`` whose leaves are role strings.

    Raises:
      RoleOverrideError: an override with an invalid regex or an unknown role.
      RoleInferenceError: the input or readout of a model with more than
        :data:`MAX_GUESSED_MATRICES` matrices could only be guessed from alphabetical order.
    """
    _, treedef, roles, _ = _infer(params, overrides)
    return jax.tree_util.tree_unflatten(treedef, roles)


def _warn_positional(path: str, role: str, where: str) -> None:
    if path in _warned:
        return
    _warned.add(path)
    warnings.warn(f"μP role of {path!r} guessed from its position ({where}, in alphabetical "
                  f"order) as {role!r}; if that is wrong pass role_overrides="
                  f"{{{'^' + re.escape(path) + '$'!r}: '<role>'}} (roles: {', '.join(ROLES)})",
                  stacklevel=4)


def _suggestion(leaves: list[_Leaf], roles: list) -> dict:
    """The likely input (fewest input features) and readout (the rarest output size) of a
    model, by shape: a starting point for ``role_overrides``, to be checked by a person."""
    mats = [i for i, r in enumerate(roles) if r in MATRIX_ROLES and not leaves[i].stack]
    if len(mats) < 2:
        return {}
    def feats(i):
        return leaves[i].shape[fan_in_axes(leaves[i].name, leaves[i].shape) - 1]
    first = min(mats, key=lambda i: (feats(i), _rank(leaves[i])))
    rest = [i for i in mats if i != first]
    sizes = [_out_size(leaves[i]) for i in rest]
    last = min(rest, key=lambda i: (sizes.count(_out_size(leaves[i])), -len(leaves[i].key)))
    return {f"^{re.escape(leaves[first].path)}$": "input",
            f"^{re.escape(leaves[last].path)}$": "output"}


def _guess_message(leaves, roles, guesses, notes) -> str:
    said = ", ".join(f"{leaves[i].path!r} -> {roles[i]} ({w})" for i, w in guesses.items())
    return (
        "μP roles of this model can only be guessed: the order its layers were created in is "
        "not known here (jax rebuilds dicts in sorted key order, e.g. inside jit or "
        "jax.tree.map; nnx State is sorted), and the names do not say which matrix reads "
        f"the input or is the readout. Guessed from alphabetical order: {said}.\n"
        + _table(leaves, roles, [1.0] * len(leaves), notes, guesses) + "\n"
        "Fix: pin the input and readout with role_overrides (lopt.make/lopt.load/"
        f"lopt.infer_roles/lopt.mup_init_params), e.g. role_overrides="
        f"{_suggestion(leaves, roles)!r} (the likely pair by shape; check it against your "
        "model), or show lopt the model's own params once outside jit "
        "(lopt.infer_roles(model.init(...)['params']) or opt.init(params)): their dicts "
        "keep the creation order, which is then remembered for this parameter structure.")


def resolve_roles(params: Any, roles: Any = None, overrides: Mapping[str, str] | None = None):
    """Returns a role tree for ``params``: ``roles`` if given (validated), else inferred."""
    if roles is None:
        return infer_roles(params, overrides)
    want = jax.tree_util.tree_structure(params)
    got_leaves = jax.tree_util.tree_leaves(roles)
    if len(got_leaves) != want.num_leaves:
        raise RoleError(
            f"roles tree has {len(got_leaves)} leaves but params has {want.num_leaves}; "
            "pass roles=None to infer them or build them with lopt.infer_roles(params)")
    bad = [r for r in got_leaves if r not in ROLES]
    if bad:
        raise RoleError(f"unknown role {bad[0]!r}; roles must be one of {ROLES}")
    return jax.tree_util.tree_unflatten(want, got_leaves)


def model_depth(params: Any, roles: Any) -> int:
    """The depth ``L`` of the 1/depth rule: how many layers of hidden weights the model
    stacks, read from the hidden leaves' paths.

    A path common to every matrix (a wrapper such as a Flax ``MLP_0`` holding ``Dense_0``
    ... ``Dense_5``) is set aside. Then a hidden leaf belongs to the layer named by its path
    up to the first component with a number in it (``layer_2/w`` -> ``layer_2``,
    ``block_0/wq`` -> ``block_0``, nnx ``blocks/3/mlp/kernel`` -> ``blocks/3``); a leaf with
    none is a layer of its own, and a stacked subtree (``nn.scan``, ``[L, ...]`` leaves)
    counts its ``L`` layers. So an MLP counts its hidden matrices and a transformer or
    ResNet its residual blocks, however many matrices each block holds: a 2-block
    transformer has depth 2, not 12, and the count grows with every block."""
    leaves, _ = _analyse(params)
    role_leaves = jax.tree.leaves(roles)
    mats = [x.name.split("/") for x, r in zip(leaves, role_leaves) if r in MATRIX_ROLES]
    common = 0
    if len(mats) > 1:
        while (common < min(map(len, mats)) - 1
               and len({m[common] for m in mats}) == 1):
            common += 1
    units: dict[str, int] = {}
    loose = 0
    for x, r in zip(leaves, role_leaves):
        if r != "hidden":
            continue
        parts = x.name.split("/")[common:]
        cut = next((i for i, c in enumerate(parts[:-1]) if _NUMBERED.search(c)), None)
        root_len = len(x.stack_root.split("/")) - common if x.stack else None
        if x.stack and (cut is None or root_len <= cut + 1):
            units["stack:" + x.stack_root] = x.stack
        elif cut is None:
            loose += 1
        else:
            units["/".join(parts[:cut + 1])] = 1
    return loose + sum(units.values())


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
        if key not in cache and not mup:      # SP: every multiplier is 1, whatever the roles
            ones = jax.tree.map(lambda _: 1.0, params)
            cache[key] = (ones, ones)
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
    """A human-readable table: path, shape, role, fan-in and LR multiplier of every leaf,
    with a note on tied embeddings and stacked layers.

    Args:
      lo: whose multipliers to show: a learned optimizer's config (``LOConfig`` or
        ``VeLOConfig``: its μP flag, base width and depth rule); ``lopt.describe_roles``
        also takes a shipped name or path. None: the classic μLO's absolute ``1/fan_in``
        (or SP with ``mup=False``).
    """
    base, depth_ref = 1.0, 0
    if lo is not None:
        # a VeLOConfig has no depth rule
        mup, base, depth_ref = lo.mup, lo.mup_base, getattr(lo, "depth_ref", 0)
    if roles is None:
        leaves, treedef, role_list, notes = _infer(params, overrides)
        roles = jax.tree_util.tree_unflatten(treedef, role_list)
    else:
        roles = resolve_roles(params, roles)
        leaves, treedef = _analyse(params)
        notes = {}
    mults = treedef.flatten_up_to(lr_multipliers(params, roles, mup, base=base,
                                                 depth_ref=depth_ref))
    lines = [_table(leaves, treedef.flatten_up_to(roles), mults, notes)]
    if mup and depth_ref:
        depth = model_depth(params, roles)
        lines.append(f"depth {depth} (model_depth): hidden steps x min(1, {depth_ref}/{depth})"
                     f" = {min(1.0, depth_ref / depth) if depth else 1.0:.3g}")
    return "\n".join(lines)


def _table(leaves: list[_Leaf], roles: list, mults: list, notes: dict,
           guesses: dict | None = None) -> str:
    head = ("path", "shape", "role", "fan_in", "lr_mult", "note")
    rows = []
    for i, (x, r, m) in enumerate(zip(leaves, roles, mults)):
        note = [notes[i]] if i in notes else []
        if x.stack:
            note.append(f"{x.stack} stacked layers")
        if guesses and i in guesses:
            note.append(f"guessed: {guesses[i]}")
        shape = (x.stack,) + x.shape if x.stack else x.shape
        rows.append((x.path, str(tuple(shape)), r, str(leaf_fan_in(x.name, x.shape)),
                     f"{m:.3g}", "; ".join(note)))
    w = [max(len(row[j]) for row in rows + [head]) for j in range(len(head))]
    return "\n".join("  ".join(c.ljust(w[j]) for j, c in enumerate(row)).rstrip()
                     for row in [head] + rows)
