"""Duality maps: the steepest-descent directions of the norms the baselines use.

Every function maps a gradient-like matrix to an update direction of known size; the
optimizers in :mod:`lopt.baselines` add momentum, step sizes and roles around them.
Matrices are in Flax layout ``[fan_in, fan_out]``; a leaf of rank > 2 is viewed as
``[prod(shape[:k]), prod(shape[k:])]`` with ``k`` its fan-in axes
(:func:`lopt.mup.roles.fan_in_axes`: ``ndim - 1``, except attention q/k/v kernels).

References: Bernstein & Newhouse, "Old Optimizer, New Norm: An Anthology", arXiv 2409.20325;
Pethick et al., Scion (ColNorm/RowNorm/Sign maps), arXiv 2502.07529; Massena et al.,
"From SGD to Muon: Adaptive Optimization via Schatten-p Norms", arXiv 2605.19781.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Muon's quintic Newton-Schulz coefficients (Jordan et al.; optax's default).
NS_COEFFS = (3.4445, -4.7750, 2.0315)
EPS = 1e-12


def newton_schulz(m: jax.Array, steps: int = 5, coeffs=NS_COEFFS, eps: float = 1e-8):
    """Muon's quintic Newton-Schulz iteration on a matrix: ``~ U V^T`` of ``m = U S V^T``
    (singular values land in ~[0.7, 1.2]). Written here because optax exposes it only in a
    private module; same iteration as ``optax.contrib.muon`` (Frobenius pre-scaling, the
    smaller Gram side)."""
    a, b, c = coeffs
    wide = m.shape[0] <= m.shape[1]
    x = m if wide else m.T
    x = x / (jnp.linalg.norm(x) + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


def as_matrix(x: jax.Array, split: int | None = None) -> jax.Array:
    """``[fan-in axes..., output axes...]`` -> ``[fan_in, fan_out]``; ``split`` is the number
    of fan-in axes (default ``ndim - 1``; vectors become one row)."""
    if x.ndim == 0:
        return x.reshape(1, 1)
    k = x.ndim - 1 if split is None else split
    return x.reshape(int(np.prod(x.shape[:k], dtype=np.int64)), -1)


def width_scale(shape, split: int | None = None) -> float:
    """Muon's shape factor ``sqrt(max(1, fan_out / fan_in))``; ``split``: fan-in axes
    (:func:`as_matrix`)."""
    m = as_matrix(jnp.zeros(shape, jnp.float32), split).shape if len(shape) else (1, 1)
    return max(1.0, m[1] / m[0]) ** 0.5


def orthogonalize(g: jax.Array, method: str = "newton-schulz", ns_steps: int = 5,
                  split: int | None = None) -> jax.Array:
    """``U V^T`` of ``g = U S V^T`` (the spectral-norm duality map), same shape as g.

    ``"svd"`` is exact (singular values 1 to ~1e-6); ``"newton-schulz"`` runs Muon's quintic,
    whose output singular values land in roughly [0.7, 1.2] (by design: faster than exact).
    ``split``: fan-in axes of ``g`` (:func:`as_matrix`).
    """
    m = as_matrix(g, split).astype(jnp.float32)
    if method == "svd":
        u, _, vt = jnp.linalg.svd(m, full_matrices=False)
        out = u @ vt
    elif method == "newton-schulz":
        out = newton_schulz(m, ns_steps)
    else:
        raise ValueError(f"unknown orthogonalization {method!r}; use 'svd' or 'newton-schulz'")
    return out.reshape(g.shape).astype(g.dtype)


def gram_spectrum(m: jax.Array):
    """Singular values and right/left basis of ``m`` from the eigendecomposition of its
    smaller Gram matrix (cheaper than an SVD for the tall/wide shapes of layers).

    Returns (s [k], vecs [k, k], side) with k = min(m.shape); side 1 means ``m^T m = V S^2 V^T``
    (vecs = V), side 0 means ``m m^T = U S^2 U^T`` (vecs = U).
    """
    if m.shape[0] >= m.shape[1]:
        w, v = jnp.linalg.eigh(m.T @ m)
        side = 1
    else:
        w, v = jnp.linalg.eigh(m @ m.T)
        side = 0
    return jnp.sqrt(jnp.maximum(w, 0.0)), v, side


def schatten_norm(s: jax.Array, q: float) -> jax.Array:
    """``||X||_{S_q}`` from the singular values s; q = inf is the spectral norm."""
    if q == float("inf"):
        return jnp.max(s)
    smax = jnp.max(s) + EPS  # scaled for overflow-free powers
    return smax * jnp.sum((s / smax) ** q) ** (1.0 / q)


def schatten_direction(g: jax.Array, p: float, inf_method: str = "svd",
                       split: int | None = None) -> jax.Array:
    """``U S^(1/p) V^T`` of ``g``, scaled so its singular values have unit mean square.

    p = 1 gives ``g * sqrt(k) / ||g||_F`` (normalized gradient, k = min(m, n)); p = inf gives
    ``U V^T`` (by ``inf_method``: "svd" or Muon's "newton-schulz"). SVD-free for finite p:
    ``g V S^(1/p - 1) V^T`` from the Gram eigenbasis. ``split``: fan-in axes of ``g``
    (:func:`as_matrix`).
    """
    m = as_matrix(g, split).astype(jnp.float32)
    if p == 1:
        out = normalized_direction(m)
    elif p == float("inf"):
        out = orthogonalize(m, inf_method)
    else:
        out = schatten_directions(m, (p,), 0)
    return out.reshape(g.shape).astype(g.dtype)


def normalized_direction(m: jax.Array) -> jax.Array:
    """The p = 1 Schatten direction of a matrix: ``m * sqrt(k) / ||m||_F``, k = min(m.shape)."""
    return m * jnp.sqrt(min(m.shape)) / (jnp.linalg.norm(m) + EPS)


def schatten_directions(m: jax.Array, ps, j) -> jax.Array:
    """The Schatten direction of matrix ``m`` for ``ps[j]`` (finite p > 1; ``j`` may be traced),
    from one Gram eigendecomposition whatever the number of candidates: a batched ``j``
    under vmap selects among cheap per-p spectral factors instead of recomputing ``eigh``."""
    k = min(m.shape)
    s, v, side = gram_spectrum(m)
    floor = 1e-6 * jnp.max(s) + EPS  # directions with s below this are numerically null
    live = s > floor
    # Python-constant exponents per p, so XLA sees the same powers as for a single p
    ts = [jnp.where(live, s ** (1.0 / p) / jnp.maximum(s, floor), 0.0) for p in ps]  # S^(1/p-1)
    sums = [jnp.sum(jnp.where(live, s ** (2.0 / p), 0.0)) for p in ps]
    t, total = (ts[0], sums[0]) if len(ps) == 1 else (jnp.stack(ts)[j], jnp.stack(sums)[j])
    out = (m @ (v * t) @ v.T) if side == 1 else ((v * t) @ v.T @ m)
    return out * jnp.sqrt(k / (total + EPS))


def rms_normalize(x: jax.Array, axis=None) -> jax.Array:
    """x / RMS(x) along ``axis`` (all axes when None): unit RMS."""
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True) + EPS)


def input_direction(g: jax.Array, split: int | None = None) -> jax.Array:
    """Input/embedding layers: each input feature's outgoing weights (a kernel row) get unit
    RMS, the ``1 -> RMS`` operator-norm duality map (Scion's ColNorm in torch layout)."""
    m = as_matrix(g, split)
    return rms_normalize(m, axis=1).reshape(g.shape)


def readout_direction(g: jax.Array, mode: str = "row", split: int | None = None) -> jax.Array:
    """Readout layers, ``RMS -> inf`` geometry: each output unit's incoming weights (a kernel
    column) normalized to l2 norm 1/sqrt(fan_in), i.e. RMS 1/fan_in (Scion's RowNorm);
    ``mode="sign"``: sign(g) / fan_in."""
    m = as_matrix(g, split)
    n_in = m.shape[0]
    if mode == "sign":
        return (jnp.sign(m) / n_in).reshape(g.shape)
    if mode != "row":
        raise ValueError(f"unknown readout map {mode!r}; use 'row' or 'sign'")
    return (rms_normalize(m, axis=0) / n_in).reshape(g.shape)
