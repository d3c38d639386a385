"""Accumulators and input features of the per-parameter MLP learned optimizer.

The features follow learned_optimization's ``AdafacMLPLOpt`` (small_fc_lopt family, Metz
et al., arXiv 2203.11860) feature for feature and in the same order, so meta-parameters
trained by that code can be used here. Per tensor ``p`` with gradient ``g``:

====  ==============================  =====================================================
idx   name                            definition
====  ==============================  =====================================================
0     g                               gradient
1     p                               parameter
2-4   m                               momenta at decays (0.9, 0.99, 0.999) (meta-learned)
5     v                               second moment at decay 0.999
6-8   m_rsqrt_v                       m * rsqrt(v + 1e-6)
9     rsqrt_v                         rsqrt(v + 1e-6)
10-12 fac_g                           Adafactor-normalized gradient, 3 decays
13-15 fac_row                         factored row accumulator (broadcast)
16-18 fac_col                         factored column accumulator (broadcast)
19-21 rsqrt_fac_row                   rsqrt(fac_row + 1e-8)
22-24 rsqrt_fac_col                   rsqrt(fac_col + 1e-8)
25-27 fac_m                           Adafactor-normalized momenta
====  ==============================  =====================================================

Tensors of rank < 2 use the unfactored second moment ``diag`` (of ``g^2 + 1e-30``) at the
three Adafactor decays in place of the row/column features (rows 13-24 are ``diag, diag,
rsqrt(diag + 1e-8), rsqrt(diag + 1e-8)``), with ``fac_g = g * rsqrt(diag + 1e-9)`` and
``fac_m = m * diag^-1/2`` (no epsilon, as in learned_optimization 0.0.1). Every feature
is second-moment normalized over the whole tensor; 11 time features
``tanh(t / tau - 1)`` are appended un-normalized.

Rows 13-24 of a factored tensor are constant along one axis, so the update evaluates
their first-layer contribution on the small row/column arrays and broadcasts the result
(``lopt.learned.mulo._mlp_direction_magnitude``) instead of materializing ``[n, 12]``
broadcast copies.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# (name, width) in learned_optimization's concatenation order.
FEATURES = (("g", 1), ("p", 1), ("m", 3), ("v", 1), ("m_rsqrt_v", 3), ("rsqrt_v", 1),
            ("fac_g", 3), ("fac_row", 3), ("fac_col", 3), ("rsqrt_fac_row", 3),
            ("rsqrt_fac_col", 3), ("fac_m", 3))
TIMESCALES = (1, 3, 10, 30, 100, 300, 1e3, 3e3, 1e4, 3e4, 1e5)


def _slices():
    out, i = {}, 0
    for name, width in FEATURES:
        out[name] = np.arange(i, i + width)
        i += width
    return out


FEATURE_INDEX = _slices()
NUM_TENSOR_FEATURES = sum(w for _, w in FEATURES)
NUM_INPUTS = NUM_TENSOR_FEATURES + len(TIMESCALES)
# Per-element rows, and rows that live on the factored row / column accumulators.
ELEM_ROWS = np.concatenate([FEATURE_INDEX[k] for k in
                            ("g", "p", "m", "v", "m_rsqrt_v", "rsqrt_v", "fac_g", "fac_m")])
ROW_ROWS = np.concatenate([FEATURE_INDEX["fac_row"], FEATURE_INDEX["rsqrt_fac_row"]])
COL_ROWS = np.concatenate([FEATURE_INDEX["fac_col"], FEATURE_INDEX["rsqrt_fac_col"]])
# Unfactored tensors fill rows 13-24 per element: (v3, v3, rsqrt v3, rsqrt v3).
DIAG_ROWS = np.arange(ROW_ROWS[0], COL_ROWS[-1] + 1)


class Accumulators(NamedTuple):
    """Per-leaf optimizer statistics (all float32; ``S`` is the leaf shape)."""
    m: jax.Array      # S + (3,): momenta
    v: jax.Array      # S + (1,): second moment
    row: jax.Array    # S without axis d0 + (3,) if factored, else (0,)
    col: jax.Array    # S without axis d1 + (3,) if factored, else (0,)
    diag: jax.Array   # S + (3,) if not factored, else (0,)


def factored_dims(shape) -> tuple[int, int] | None:
    """(d1, d0): the second-largest and largest axes, or None for rank < 2.

    Same choice as Adafactor / learned_optimization (stable order on ties).
    """
    if len(shape) < 2:
        return None
    order = np.argsort(np.asarray(shape), kind="stable")
    return int(order[-2]), int(order[-1])


def time_features(step) -> jax.Array:
    """``tanh(step / tau - 1)`` for the 11 timescales; shape [11]."""
    tau = jnp.asarray(TIMESCALES, jnp.float32)
    return jnp.tanh(jnp.asarray(step, jnp.float32) / tau - 1.0)


# Gradient elements beyond this magnitude are treated as faults, like NaN and inf.
MAX_GRAD = 1e8


def neutralize(g: jax.Array) -> jax.Array:
    """``g`` with every non-finite element, and every element above ``MAX_GRAD`` in
    magnitude, set to 0.

    One bad element must not poison its tensor: the per-tensor feature normalizers and the
    factored accumulators are shared by every element, so a single 1e20 (whose square
    overflows float32) or even a clipped 1e8 would rescale every other element's features
    for the rest of training. A real gradient element of 1e8 is already a fault, so such
    elements count as absent, and every gradient below the limit is untouched (the
    AdafacMLPLOpt computation is unchanged for it).
    """
    bad = ~jnp.isfinite(g) | (jnp.abs(g) > MAX_GRAD)
    return jnp.where(bad, jnp.zeros_like(g), g)


def finite_or_zero(p: jax.Array) -> jax.Array:
    """``p`` with every non-finite element set to 0, for the parameter feature.

    One NaN or inf parameter must not poison its tensor either: the parameter feature is
    normalized by its mean square over the whole tensor, so without this one bad weight
    made every element's update NaN. With it the bad element is seen as 0 (its update is
    finite, and the element itself stays non-finite after ``apply_updates``, where a
    training loop's divergence check sees it); every finite element is untouched.
    :func:`feature_parts` and :func:`elem_features` apply it inside their fused passes
    (the normalizer's reduction, the per-slice feature block), not as a pass of its own.
    """
    return jnp.where(jnp.isfinite(p), p, jnp.zeros_like(p))


def init_accumulators(p: jax.Array) -> Accumulators:
    shape = tuple(np.shape(p))
    z = lambda s: jnp.zeros(s, jnp.float32)
    fd = factored_dims(shape)
    if fd is None:
        return Accumulators(z(shape + (3,)), z(shape + (1,)), z((0,)), z((0,)), z(shape + (3,)))
    d1, d0 = fd
    row = tuple(np.delete(shape, d0)) + (3,)
    col = tuple(np.delete(shape, d1)) + (3,)
    return Accumulators(z(shape + (3,)), z(shape + (1,)), z(row), z(col), z((0,)))


_TINY = float(np.finfo(np.float32).tiny)


def _safe_rsqrt(x):
    return jax.lax.rsqrt(jnp.maximum(x, 1e-9))


def update_accumulators(acc: Accumulators, g: jax.Array, mom_decay, rms_decay, fac_decay):
    """One step of every accumulator. Returns (new accumulators, per-element parts).

    The per-element parts are ``fac_g`` [S, 3], ``fac_m`` [S, 3] and, for factored
    tensors, the row/col factors needed by the features.
    """
    gf = g.astype(jnp.float32)[..., None]
    m = mom_decay * acc.m + (1 - mom_decay) * gf
    rd = jnp.clip(rms_decay, 0.0, 1.0)
    v = rd * acc.v + (1 - rd) * gf * gf
    fd_ = jnp.clip(fac_decay, 0.0, 1.0)
    g2 = gf * gf + 1e-30
    fd = factored_dims(g.shape)
    if fd is None:
        diag = fd_ * acc.diag + (1 - fd_) * g2
        fac_g = gf * _safe_rsqrt(diag + 1e-9)
        # No epsilon, as in learned_optimization 0.0.1 (later versions add 1e-6, which moves
        # the update by up to ~30% of a step where |g| is small). diag >= (1 - decay) * 1e-30
        # is normal in float32 unless decay is within ~1e-8 of 1; the floor at the smallest
        # normal only acts where diag underflows (where the reference gives inf or NaN).
        fac_m = m * jnp.maximum(diag, _TINY) ** -0.5
        return Accumulators(m, v, acc.row, acc.col, diag), fac_g, fac_m
    d1, d0 = fd
    row = fd_ * acc.row + (1 - fd_) * jnp.mean(g2, axis=d0)
    col = fd_ * acc.col + (1 - fd_) * jnp.mean(g2, axis=d1)
    reduced_d1 = d1 - 1 if d1 > d0 else d1
    row_col_mean = jnp.mean(row, axis=reduced_d1, keepdims=True)
    row_factor = jnp.expand_dims(_safe_rsqrt(row / (row_col_mean + 1e-9)), d0)
    col_factor = jnp.expand_dims(_safe_rsqrt(col), d1)
    fac_g = gf * row_factor * col_factor
    fac_m = m * row_factor * col_factor
    return Accumulators(m, v, row, col, acc.diag), fac_g, fac_m


def _norm_scale(x, axes):
    # rsqrt(1e-5 + E[x^2]) per feature column: learned_optimization's second_moment_normalizer.
    return jax.lax.rsqrt(1e-5 + jnp.mean(jnp.square(x), axis=axes))


def elem_features(raw) -> jax.Array:
    """The 16 per-element features (ordered as ELEM_ROWS) from :func:`feature_parts`'s raw
    per-element arrays; works on any slice of them."""
    rsqrt_v = jax.lax.rsqrt(raw["v"] + 1e-6)
    return jnp.concatenate([raw["g"], finite_or_zero(raw["p"]), raw["m"], raw["v"], raw["m"] * rsqrt_v,
                            rsqrt_v, raw["fac_g"], raw["fac_m"]], -1)


def feature_parts(p, g, acc: Accumulators, fac_g, fac_m):
    """Un-normalized features split by where they live, plus their normalization scales.

    Returns:
      elem: the raw per-element arrays ``{"g", "p", "m", "v", "fac_g", "fac_m"}`` (each
        S + (k,)); :func:`elem_features` turns them, or a slice of them, into the 16
        per-element features. Keeping them apart lets the update build the ``[n, 16]``
        block slice by slice, in cache, instead of writing it to memory whole;
      row: factored rows (S without d0) + (6,) ordered as ROW_ROWS, or, for an
        unfactored tensor, the per-element S + (12,) block ordered as DIAG_ROWS;
      col: factored columns (S without d1) + (6,) ordered as COL_ROWS, or None;
      scale: [NUM_TENSOR_FEATURES] second-moment normalizers, in FEATURES order.
    """
    raw = {"g": g.astype(jnp.float32)[..., None], "p": p.astype(jnp.float32)[..., None],
           "m": acc.m, "v": acc.v, "fac_g": fac_g, "fac_m": fac_m}
    axes = tuple(range(p.ndim))
    # mean squares feature by feature, each a fused reduction (no [n, 16] concatenation)
    rsqrt_v = jax.lax.rsqrt(acc.v + 1e-6)
    msq = lambda x: jnp.mean(jnp.square(x), axis=axes)
    elem_msq = jnp.concatenate([msq(raw["g"]), msq(finite_or_zero(raw["p"])), msq(acc.m), msq(acc.v),
                                msq(acc.m * rsqrt_v), msq(rsqrt_v), msq(fac_g), msq(fac_m)])
    scale = jnp.zeros((NUM_TENSOR_FEATURES,), jnp.float32).at[ELEM_ROWS].set(
        jax.lax.rsqrt(1e-5 + elem_msq))
    fd = factored_dims(p.shape)
    if fd is None:
        d = acc.diag
        rd = jax.lax.rsqrt(d + 1e-8)
        dense = jnp.concatenate([d, d, rd, rd], -1)
        scale = scale.at[DIAG_ROWS].set(_norm_scale(dense, axes))
        return raw, dense, None, scale
    row = jnp.concatenate([acc.row, jax.lax.rsqrt(acc.row + 1e-8)], -1)
    col = jnp.concatenate([acc.col, jax.lax.rsqrt(acc.col + 1e-8)], -1)
    # A row feature is constant along d0, so its mean square over the tensor is its mean
    # square over the row array itself (likewise for columns).
    scale = scale.at[ROW_ROWS].set(_norm_scale(row, tuple(range(row.ndim - 1))))
    scale = scale.at[COL_ROWS].set(_norm_scale(col, tuple(range(col.ndim - 1))))
    return raw, row, col, scale


def dense_features(p, g, acc: Accumulators, fac_g, fac_m, step) -> jax.Array:
    """The full normalized ``[n, NUM_INPUTS]`` input matrix, materialized.

    The reference layout for inspection and tests; the update itself never builds it.
    """
    raw, row, col, scale = feature_parts(p, g, acc, fac_g, fac_m)
    elem = elem_features(raw)
    n = int(np.prod(p.shape))
    full = jnp.zeros(p.shape + (NUM_TENSOR_FEATURES,), jnp.float32)
    full = full.at[..., ELEM_ROWS].set(elem)
    if col is None:
        full = full.at[..., DIAG_ROWS].set(row)
    else:
        d1, d0 = factored_dims(p.shape)
        full = full.at[..., ROW_ROWS].set(jnp.broadcast_to(jnp.expand_dims(row, d0),
                                                           p.shape + (6,)))
        full = full.at[..., COL_ROWS].set(jnp.broadcast_to(jnp.expand_dims(col, d1),
                                                           p.shape + (6,)))
    full = full.reshape(n, NUM_TENSOR_FEATURES) * scale
    tf = jnp.broadcast_to(time_features(step), (n, len(TIMESCALES)))
    return jnp.concatenate([full, tf], -1)


# VeLO's fraction-of-training embedding (Metz et al., arXiv 2211.09760, hyper_v2
# ``_fractional_tanh_embed``): tanh(10 (t/T - c)) at these offsets c.
FRACTION_OFFSETS = (0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)


def fraction_features(step, num_steps) -> jax.Array:
    """``tanh(10 (step / num_steps - c))`` for the 9 offsets; shape [9]."""
    frac = jnp.asarray(step, jnp.float32) / jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0)
    return jnp.tanh(10.0 * (frac - jnp.asarray(FRACTION_OFFSETS, jnp.float32)))


def num_inputs(time_features: str = "tau") -> int:
    """Input width of the per-parameter MLP for a time-feature variant."""
    extra = len(FRACTION_OFFSETS) if time_features == "fraction" else 0
    return NUM_INPUTS + extra
