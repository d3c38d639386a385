"""Adaptive Schatten-p descent: each hidden layer steps along ``U S^(1/p) V^T`` of its momentum
with its own p, chosen from the layer's gradient and input activations.

p = 1 is normalized SGD, p -> inf is Muon/spectral descent. Every ``every`` steps each hidden
layer re-picks p from ``p_grid`` by the criterion of Massena et al.,

    p* = argmax_p ||G||_S(1 + 1/p) / ||A||_S(2(p + 1)/(p - 1)),

with G the layer's gradient and A its input activations on the current batch (passed to
``update`` as the extra argument ``activations``: a tree like params holding ``[batch,
fan_in]`` arrays at hidden kernels; see ``Task.activations``). Without activations for a
layer, A is taken as whitened (all singular values equal). The Schatten norms come from
Gram-matrix eigenvalues and the direction for finite p from the Gram eigenbasis (no SVD);
p = inf uses Muon's Newton-Schulz. Input, readout and non-matrix leaves use AdamW, as in Muon.

References: Massena et al., "From SGD to Muon: Adaptive Optimization via Schatten-p Norms",
arXiv 2605.19781.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.baselines import dualize
from lopt.mup.roles import fan_in_axes, path_str

INF = float("inf")
DEFAULT_P_GRID = (1.0, 2.0, 4.0, 8.0, INF)


class SchattenState(NamedTuple):
    momentum: Any    # tree like params: momentum of hidden matrices (None elsewhere)
    p_index: Any     # tree like params: [] int32 index into p_grid per hidden matrix
    count: jax.Array  # [] int32 steps taken
    adam: Any        # AdamW state of the other leaves


def _is_hidden(x, role) -> bool:
    return role == "hidden" and x.ndim >= 2


def criterion(g: jax.Array, a: jax.Array | None, p_grid=DEFAULT_P_GRID,
              split: int | None = None) -> jax.Array:
    """The score of every p in ``p_grid`` (higher is better) for gradient g, activations a;
    ``split``: g's fan-in axes (:func:`lopt.mup.roles.fan_in_axes`; default all but the last)."""
    s_g, _, _ = dualize.gram_spectrum(dualize.as_matrix(g, split).astype(jnp.float32))
    if a is None:
        s_a = jnp.ones((dualize.as_matrix(g, split).shape[0],), jnp.float32)
    else:
        s_a, _, _ = dualize.gram_spectrum(a.reshape(-1, a.shape[-1]).astype(jnp.float32))
    scores = []
    for p in p_grid:
        q_g = 1.0 + (0.0 if p == INF else 1.0 / p)
        q_a = INF if p == 1 else (2.0 if p == INF else 2.0 * (p + 1.0) / (p - 1.0))
        scores.append(dualize.schatten_norm(s_g, q_g) /
                      (dualize.schatten_norm(s_a, q_a) + dualize.EPS))
    return jnp.stack(scores)


def adaptive_schatten(lr: float, roles: Any, p_grid=DEFAULT_P_GRID, every: int = 50,
                      momentum: float = 0.95, adam_lr: float | None = None,
                      fixed_p: float | None = None) -> optax.GradientTransformationExtraArgs:
    """Adaptive Schatten-p descent.

    Args:
      lr: step size of the hidden matrices (update scaled by sqrt(max(1, fan_out/fan_in))).
      roles: μP role tree of the parameters.
      p_grid: candidate p values (``inf`` allowed).
      every: re-choose p every this many steps (at step 0 and every multiple).
      momentum: Nesterov momentum of the hidden matrices.
      adam_lr: AdamW LR of the other leaves (default lr / 10, as in the Muon baseline).
      fixed_p: use this p everywhere and skip the criterion (for ablations and tests).
    """
    p_grid = tuple(float(p) for p in p_grid)
    if fixed_p is not None:
        p_grid = (float(fixed_p),)
    adam = optax.adamw(adam_lr if adam_lr else lr / 10, weight_decay=0.0)

    def others(tree):
        return jax.tree.map(lambda x, r: None if _is_hidden(x, r) else x, tree, roles)

    def init_fn(params):
        mom = jax.tree.map(lambda x, r: jnp.zeros(x.shape, jnp.float32)
                           if _is_hidden(x, r) else None, params, roles)
        pidx = jax.tree.map(lambda x, r: jnp.int32(len(p_grid) - 1) if _is_hidden(x, r)
                            else None, params, roles)
        return SchattenState(mom, pidx, jnp.int32(0), adam.init(others(params)))

    finite = tuple(p for p in p_grid if p not in (1.0, INF))
    kinds = [k for k, present in (("one", 1.0 in p_grid), ("finite", bool(finite)),
                                  ("inf", INF in p_grid)) if present]
    # grid index -> (branch, index among the finite p)
    kind_of = jnp.asarray([kinds.index("one" if p == 1.0 else "inf" if p == INF else "finite")
                           for p in p_grid], jnp.int32)
    sub_of = jnp.asarray([finite.index(p) if p in finite else 0 for p in p_grid], jnp.int32)
    branch_fns = {"one": lambda m, j: dualize.normalized_direction(m),
                  "finite": lambda m, j: dualize.schatten_directions(m, finite, j),
                  "inf": lambda m, j: dualize.orthogonalize(m, "newton-schulz")}

    def direction(g, i, split):
        """``schatten_direction(g, p_grid[i], "newton-schulz", split)``. The suite vmaps runs,
        which batches i and turns ``lax.switch`` into computing every branch: the finite p
        share one branch (one Gram ``eigh``), so that costs 3 branches, not len(p_grid)."""
        if len(p_grid) == 1:
            return dualize.schatten_direction(g, p_grid[0], "newton-schulz", split)
        m = dualize.as_matrix(g, split).astype(jnp.float32)
        fns = [branch_fns[k] for k in kinds]
        out = fns[0](m, sub_of[i]) if len(fns) == 1 else jax.lax.switch(
            kind_of[i], fns, m, sub_of[i])
        return out.reshape(g.shape).astype(g.dtype)

    def update_fn(updates, state, params=None, *, activations=None, **extra):
        del extra
        acts = activations if activations is not None else jax.tree.map(lambda _: None,
                                                                        updates)
        rechoose = (state.count % every) == 0

        def leaf(path, g, r, m, i, a):
            if not _is_hidden(g, r):
                return None, None, None
            # the one matrix view (lopt.mup.roles.fan_in_axes), as Muon, modular and spectral:
            # a q/k/v kernel [d, heads, head_dim] is one [d, heads * head_dim] matrix
            k = fan_in_axes(path_str(path), g.shape)
            g32 = g.astype(jnp.float32)
            m = momentum * m + g32
            nest = g32 + momentum * m
            if len(p_grid) > 1:
                i = jax.lax.cond(rechoose, lambda: jnp.argmax(criterion(g32, a, p_grid, k))
                                 .astype(jnp.int32), lambda: i)
            d = direction(nest, i, k) * dualize.width_scale(g.shape, k)
            return (-lr * d).astype(g.dtype), m, i

        is_none = lambda x: x is None
        out = jax.tree_util.tree_map_with_path(leaf, updates, roles, state.momentum,
                                               state.p_index, acts, is_leaf=is_none)
        trip = lambda x: isinstance(x, tuple) and len(x) == 3
        hid = jax.tree.map(lambda t: t[0], out, is_leaf=trip)
        mom = jax.tree.map(lambda t: t[1], out, is_leaf=trip)
        pidx = jax.tree.map(lambda t: t[2], out, is_leaf=trip)
        o_upd, adam_state = adam.update(others(updates), state.adam,
                                        others(params) if params is not None else None)
        merged = jax.tree.map(lambda h, o: o if h is None else h, hid, o_upd,
                              is_leaf=is_none)
        return merged, SchattenState(mom, pidx, state.count + 1, adam_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def chosen_p(state: SchattenState, p_grid=DEFAULT_P_GRID) -> Any:
    """The p currently used by each hidden matrix (a tree of floats, None elsewhere)."""
    return jax.tree.map(lambda i: p_grid[int(i)], state.p_index)


__all__ = ["adaptive_schatten", "criterion", "chosen_p", "SchattenState", "DEFAULT_P_GRID",
           "INF"]
