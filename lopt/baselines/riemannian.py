"""Riemannian descent on the manifold of fixed-rank matrices, for factored weights W = A B^T.

A factored weight is a dict node ``{"a": A [m, r], "b": B [n, r]}`` (as in the transformer's
``-r<rank>`` attention). Its update treats W as a point of the rank-r manifold: the Euclidean
gradient G = dL/dW is projected onto the tangent space at W, heavy-ball momentum is carried
by projecting the previous direction onto the new tangent space (vector transport by
projection), and the step is retracted by truncated SVD back to rank r. Everything is done
with [m, 2r] / [n, 2r] factors and a 2r x 2r SVD; W and G are never formed. G enters only
through the factor gradients G_A = G B and G_B = G^T A, which determine the projection:
with A = Q_A R_A and B = Q_B R_B, G Q_B = G_A R_B^-1 and G^T Q_A = G_B R_A^-1 (ridge-regularized,
so a zero-initialized factor is handled). Every other leaf uses AdamW.

References: Knight, "Riemannian Gradient Descent for Low-Rank Architectures", arXiv
2606.02328; Absil, Mahony & Sepulchre, "Optimization Algorithms on Matrix Manifolds" (2008);
Vandereycken, "Low-rank matrix completion by Riemannian optimization", arXiv 1209.3834.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class RiemannianState(NamedTuple):
    momentum: tuple   # per factored weight: (L [m, 2r], R [n, 2r]), direction = L R^T
    adam: Any         # AdamW state of the other leaves (list)


def factored_pairs(tree) -> list[tuple[int, int]]:
    """Indices (into ``jax.tree.leaves(tree)``) of the (A, B) leaves of each factored weight."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    where = {tuple(path): i for i, (path, _) in enumerate(flat)}
    pairs = []
    for path, x in flat:
        last = path[-1]
        if getattr(last, "key", None) != "a" or x.ndim != 2:
            continue
        sib = tuple(path[:-1]) + (jax.tree_util.DictKey("b"),)
        if sib in where and flat[where[sib]][1].ndim == 2 and \
                flat[where[sib]][1].shape[1] == x.shape[1]:
            pairs.append((where[tuple(path)], where[sib]))
    return pairs


def _solve_right(x, r, ridge):
    """x R^-1 for upper-triangular r, as ridge least squares: x R^T (R R^T + d I)^-1."""
    rr = r @ r.T
    d = ridge * (jnp.trace(rr) / r.shape[0]) + 1e-30
    return jnp.linalg.solve(rr + d * jnp.eye(r.shape[0], dtype=r.dtype), (x @ r.T).T).T


def _tangent(qa, qb, xq, xtq):
    """Tangent components (K, Up, Vp) at W = Q_A S Q_B^T of any X given X Q_B and X^T Q_A."""
    k = qa.T @ xq
    return k, xq - qa @ k, xtq - qb @ k.T


def tangent_step(a, b, ga, gb, mom, *, lr, beta, ridge=1e-6):
    """One Riemannian heavy-ball step of W = a b^T.

    Args:
      a, b: factors [m, r], [n, r]; ga, gb: their gradients (G b, G^T a).
      mom: previous direction as (L, R) with direction L R^T (zeros at the start).
      lr, beta: step size and momentum.

    Returns:
      (new a, new b, new momentum (L, R)).
    """
    r = a.shape[1]
    qa, ra = jnp.linalg.qr(a)
    qb, rb = jnp.linalg.qr(b)
    k, up, vp = _tangent(qa, qb, _solve_right(ga, rb, ridge), _solve_right(gb, ra, ridge))
    lm, rm = mom
    k2, up2, vp2 = _tangent(qa, qb, lm @ (rm.T @ qb), rm @ (lm.T @ qa))
    k, up, vp = k + beta * k2, up + beta * up2, vp + beta * vp2
    # W - lr xi = [Q_A Q_1] core [Q_B Q_2]^T with Up = Q_1 R_1, Vp = Q_2 R_2.
    q1, r1 = jnp.linalg.qr(up)
    q2, r2 = jnp.linalg.qr(vp)
    core = jnp.block([[ra @ rb.T - lr * k, -lr * r2.T], [-lr * r1, jnp.zeros((r, r), a.dtype)]])
    uc, sc, vct = jnp.linalg.svd(core)
    root = jnp.sqrt(sc[:r])
    new_a = jnp.concatenate([qa, q1], 1) @ (uc[:, :r] * root)
    new_b = jnp.concatenate([qb, q2], 1) @ (vct[:r].T * root)
    new_mom = (jnp.concatenate([qa @ k + up, qa], 1), jnp.concatenate([qb, vp], 1))
    return new_a, new_b, new_mom


def riemannian_lowrank(lr: float, roles: Any = None, momentum: float = 0.9,
                       adam_lr: float | None = None) -> optax.GradientTransformation:
    """Riemannian fixed-rank descent on every factored weight; AdamW (LR ``adam_lr``,
    default lr / 100: plain gradient steps need a ~100x larger LR than Adam) elsewhere."""
    del roles
    adam = optax.adamw(adam_lr if adam_lr else lr / 100, weight_decay=0.0)

    def init_fn(params):
        leaves = jax.tree.leaves(params)
        pairs = factored_pairs(params)
        in_pair = {i for p in pairs for i in p}
        mom = tuple((jnp.zeros((leaves[i].shape[0], 2 * leaves[i].shape[1]), jnp.float32),
                     jnp.zeros((leaves[j].shape[0], 2 * leaves[j].shape[1]), jnp.float32))
                    for i, j in pairs)
        return RiemannianState(mom, adam.init([x for i, x in enumerate(leaves)
                                               if i not in in_pair]))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("riemannian_lowrank needs params: call update(grads, state, "
                             "params)")
        g_leaves, treedef = jax.tree.flatten(updates)
        p_leaves = jax.tree.leaves(params)
        pairs = factored_pairs(params)
        in_pair = {i for p in pairs for i in p}
        out = [None] * len(g_leaves)
        moms = []
        for (i, j), mom in zip(pairs, state.momentum):
            a, b = p_leaves[i].astype(jnp.float32), p_leaves[j].astype(jnp.float32)
            na, nb, nm = tangent_step(a, b, g_leaves[i].astype(jnp.float32),
                                      g_leaves[j].astype(jnp.float32), mom, lr=lr,
                                      beta=momentum)
            out[i] = (na - a).astype(p_leaves[i].dtype)
            out[j] = (nb - b).astype(p_leaves[j].dtype)
            moms.append(nm)
        rest = [k for k in range(len(g_leaves)) if k not in in_pair]
        upd, adam_state = adam.update([g_leaves[k] for k in rest], state.adam,
                                      [p_leaves[k] for k in rest])
        for k, u in zip(rest, upd):
            out[k] = u
        return jax.tree.unflatten(treedef, out), RiemannianState(tuple(moms), adam_state)

    return optax.GradientTransformation(init_fn, update_fn)
