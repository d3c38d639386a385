"""The study's hand-designed optimizers (GD, Adam, diagonal, Shampoo-style, natural
gradient) and their LR grids; a learned optimizer joins as ``"lo"``."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from eval.scaling.problem import top_eigenvalue

GRIDS = {"gd": np.geomspace(1 / 32, 1.9, 7), "diag": np.geomspace(1 / 32, 1.9, 7),
         "ng": np.geomspace(1 / 16, 1.0, 7), "adam": np.geomspace(1e-4, 1e-1, 7),
         "shampoo": np.geomspace(1e-4, 1e-1, 7)}
OPTIMIZERS = ("gd", "adam", "diag", "shampoo", "ng")


def shampoo(lr, n, eps=1e-6):
    """Shampoo-style Kronecker preconditioner for a vector reshaped to [a, n // a]."""
    a = 2 ** int(np.floor(np.log2(n) / 2))
    b = n // a

    def inv_root(m):
        e, v = jnp.linalg.eigh(m)
        return (v * jnp.maximum(e, eps) ** -0.25) @ v.T

    def init_fn(w):
        return (eps * jnp.eye(a), eps * jnp.eye(b))

    def update_fn(g, state, params=None):
        gm = g["w"].reshape(a, b)
        lft, rgt = state[0] + gm @ gm.T, state[1] + gm.T @ gm
        return {"w": -lr * (inv_root(lft) @ gm @ inv_root(rgt)).reshape(-1)}, (lft, rgt)
    return optax.GradientTransformation(init_fn, update_fn)


def _preconditioned(lr, pre):
    """``-lr * P g`` for a fixed matrix (or diagonal, as a vector) P."""
    def update_fn(g, state, params=None):
        u = pre * g["w"] if pre.ndim == 1 else pre @ g["w"]
        return {"w": -lr * u}, state
    return optax.GradientTransformation(lambda w: optax.EmptyState(), update_fn)


def make_optimizer(name: str, lr, h, lo=None):
    """Optimizer ``name`` at LR ``lr`` (absolute or relative, see GRIDS) for curvature h."""
    n = h.shape[0]
    if name == "gd":
        return optax.sgd(lr / top_eigenvalue(h))
    if name == "adam":
        return optax.adam(lr)
    if name == "diag":
        d = 1.0 / jnp.maximum(jnp.diag(h), 1e-30)
        lmax = top_eigenvalue(h * jnp.sqrt(d)[:, None] * jnp.sqrt(d)[None, :])
        return _preconditioned(lr / lmax, d)
    if name == "shampoo":
        return shampoo(lr, n)
    if name == "ng":
        return _preconditioned(lr, h)   # h is already (H + mu I)^-1 here, see _curvature
    if name == "lo":
        import lopt
        theta, config = lo
        return lopt.make_from_config(theta, config, roles={"w": "vector"})
    raise ValueError(f"unknown optimizer {name!r}")


def curvature(name, h, b):
    """(matrix the optimizer is built from, H, b) for one seed and N."""
    if name != "ng":
        return h, h, b
    hd = np.asarray(h, np.float64)
    mu = 1e-6 * np.linalg.eigvalsh(hd)[-1]
    inv = np.linalg.inv(hd + mu * np.eye(hd.shape[0]))    # float64: H is ill-conditioned
    return jnp.asarray(inv, jnp.float32), h, b
