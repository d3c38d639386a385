"""A compact per-parameter learned optimizer: 8 normalized features, a hidden-8 MLP, and a
per-tensor normalized output (``LOConfig(features="compact")``).

The classic μLO (:mod:`lopt.learned.features`, AdafacMLPLOpt's 39 inputs through a 32-32 MLP)
spends ~2.3k multiply-adds per parameter per step, and its feature pipeline (7 accumulators
per element, 28 normalized features) another ~37 ns per parameter here: a μLO train step costs
10-12x an AdamW step on the suite's MLPs. This design keeps what a per-parameter learned
optimizer needs and drops the rest (Celo2, arXiv 2602.19142: hidden 8, normalized inputs and
outputs):

* **state**: two momenta (decays 0.9, 0.99, meta-learned) and one second moment (0.999) per
  element, 3 floats against Adam's 2 and the classic μLO's 10;
* **features** (each divided by its root-mean-square over the tensor, as the classic μLO
  does): ``g, p, m1, m2, g r, m1 r, m2 r, r`` with ``r = rsqrt(v + 1e-12)``, the Adam-normalized
  gradient and momenta among them; the time features (the same for every element) enter as
  a first-layer bias;
* **network**: ``8 + time -> H -> H -> 1`` (ReLU, ``H = hidden_size``, 8 by default), written
  unit by unit so that XLA fuses features and network into one pass over each tensor;
  ~140 multiply-adds per parameter at ``H = 8``;
* **output**: the direction's root-mean-square over the tensor is set to 1
  (``output_norm``, Celo2's output normalization; with a magnitude head, as the classic μLO,
  when ``magnitude=True``), so the learned network picks the direction and the μP role,
  ``step_mult`` and the step rules of :class:`lopt.learned.LOConfig` pick the size;
* **orthogonalize** (option): hidden matrices step along the Newton-Schulz orthogonalization
  of that direction (Muon's map, :func:`lopt.baselines.dualize.newton_schulz`), scaled as
  Muon scales it, ``sqrt(max(1, fan_out / fan_in))``: its spectral norm is the same at every
  width (μP's spectral condition), and at the base width a square matrix's step has the size
  of the unorthogonalized one (:func:`orthogonal_direction`). μLO only.

References: Celo2 (arXiv 2602.19142); Celo (arXiv 2501.12670); μLO (arXiv 2406.00153);
Jordan et al., Muon.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lopt.baselines import dualize

FEATURES = ("g", "p", "m1", "m2", "g_r", "m1_r", "m2_r", "r")
NUM_FEATURES = len(FEATURES)
INITIAL_MOMENTUM_DECAYS = (0.9, 0.99)
INITIAL_RMS_DECAYS = (0.999,)
_EPS_V = 1e-12        # inside rsqrt(v + eps): Adam's eps 1e-6 on sqrt(v)
_EPS_NORM = 1e-30     # inside the per-tensor rsqrt(mean(x^2) + eps) normalizers


class CompactAccumulators(NamedTuple):
    """Per-leaf statistics of the compact learned optimizer (float32, ``S`` the leaf shape)."""
    m: jax.Array      # S + (2,): momenta
    v: jax.Array      # S: second moment


def init_accumulators(p: jax.Array) -> CompactAccumulators:
    shape = tuple(np.shape(p))
    return CompactAccumulators(jnp.zeros(shape + (2,), jnp.float32),
                               jnp.zeros(shape, jnp.float32))


def init_nn(key: jax.Array, num_inputs: int, hidden_size: int, hidden_layers: int,
            num_outputs: int) -> dict:
    """The MLP's weights: truncated normal with std 1/sqrt(fan_in), zero biases."""
    sizes = [num_inputs] + [hidden_size] * hidden_layers + [num_outputs]
    keys = jax.random.split(key, len(sizes) - 1)
    nn = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        nn[f"w{i}"] = jax.random.truncated_normal(keys[i], -2.0, 2.0, (a, b)) / np.sqrt(a)
        nn[f"b{i}"] = jnp.zeros((b,), jnp.float32)
    return nn


def adam_nn(num_inputs: int, hidden_size: int, hidden_layers: int, num_outputs: int) -> dict:
    """Weights under which the network's direction is the normalized Adam direction
    ``m1 / sqrt(v)`` (feature ``m1_r``): a hand-set starting point, and the "no
    meta-training" row of an ablation.

    Two ReLU units carry ``relu(x)`` and ``relu(-x)`` through every hidden layer and the
    output takes their difference; every other weight is 0 (the magnitude output too).
    """
    if hidden_size < 2:
        raise ValueError("the Adam weights need hidden_size >= 2")
    sizes = [num_inputs] + [hidden_size] * hidden_layers + [num_outputs]
    nn = {f"w{i}": np.zeros((a, b), np.float32) for i, (a, b) in
          enumerate(zip(sizes[:-1], sizes[1:]))}
    nn.update({f"b{i}": np.zeros((b,), np.float32) for i, b in enumerate(sizes[1:])})
    k = FEATURES.index("m1_r")
    nn["w0"][k, 0], nn["w0"][k, 1] = 1.0, -1.0
    for i in range(1, hidden_layers):
        nn[f"w{i}"][0, 0] = nn[f"w{i}"][1, 1] = 1.0
    nn[f"w{hidden_layers}"][0, 0], nn[f"w{hidden_layers}"][1, 0] = 1.0, -1.0
    return {k_: jnp.asarray(v) for k_, v in nn.items()}


def update_accumulators(acc: CompactAccumulators, g: jax.Array, mom_decay, rms_decay):
    m = mom_decay * acc.m + (1 - mom_decay) * g[..., None]
    rd = jnp.clip(rms_decay[0], 0.0, 1.0)
    v = rd * acc.v + (1 - rd) * g * g
    return CompactAccumulators(m, v)


def _features(g, p, m, v):
    """The 8 raw features of a tensor, as a list of arrays shaped like ``g`` (FEATURES order)."""
    r = jax.lax.rsqrt(v + _EPS_V)
    m1, m2 = m[..., 0], m[..., 1]
    return [g, p, m1, m2, g * r, m1 * r, m2 * r, r]


def _normalizers(g, p, m, v):
    """rsqrt(mean(x^2) + eps) of each feature over the whole tensor: [NUM_FEATURES]."""
    r2 = 1.0 / (v + _EPS_V)
    m1, m2 = m[..., 0], m[..., 1]
    msq = jnp.stack([jnp.mean(x) for x in (g * g, p * p, m1 * m1, m2 * m2, g * g * r2,
                                           m1 * m1 * r2, m2 * m2 * r2, r2)])
    return jax.lax.rsqrt(msq + _EPS_NORM)


def _dense(xs, w, b, relu: bool):
    """One layer on a list of same-shaped arrays: ``out_j = sum_i xs_i w_ij + b_j``.

    Written unit by unit, not as a matmul: the whole network is then one elementwise loop
    that XLA fuses with the features into a single pass over the tensor. An ``[n, 8] x
    [8, 8]`` matmul is far from the matmul unit's efficient shapes: on XLA:CPU the fused
    form measured 9 ms against 112 ms for the chunked matmuls on a 1M-element tensor (one
    process, one core, in the same run; ``python -m eval.bench`` has the train-step ratio).
    """
    out = []
    for j in range(w.shape[1]):
        h = b[j] + xs[0] * w[0, j]
        for i in range(1, len(xs)):
            h = h + xs[i] * w[i, j]
        out.append(jax.nn.relu(h) if relu else h)
    return out


def raw_outputs(nn, g, p, acc: CompactAccumulators, time_in):
    """The network's outputs for every element of one tensor: a list (direction, and the
    magnitude when the network has one) of arrays shaped like ``g``.

    The per-tensor normalizers are folded into the first layer's feature rows and the time
    inputs (the same for every element) into its bias."""
    scale = _normalizers(g, p, acc.m, acc.v)
    w0 = nn["w0"]
    h = _features(g, p, acc.m, acc.v)
    num_layers = len(nn) // 2
    bias0 = time_in @ w0[NUM_FEATURES:] + nn["b0"]
    h = _dense(h, w0[:NUM_FEATURES] * scale[:, None], bias0, relu=num_layers > 1)
    for i in range(1, num_layers):
        h = _dense(h, nn[f"w{i}"], nn[f"b{i}"], relu=i < num_layers - 1)
    return h


def rms_normalize(d):
    """``d`` with root-mean-square 1 over the whole tensor (0 stays 0)."""
    return d * jax.lax.rsqrt(jnp.mean(d * d) + _EPS_NORM)


def orthogonal_direction(d, split: int, base: float):
    """Muon's direction for a hidden matrix, in the units of the μLO's hidden step.

    The Newton-Schulz orthogonalization of ``d`` (``split``: its fan-in axes) times Muon's
    ``sqrt(max(1, fan_out / fan_in))``, times ``fan_in / sqrt(base)`` to undo the μP
    hidden multiplier ``base / fan_in`` that the update applies next. The step's spectral
    norm is then ``step_mult * sqrt(base)`` at every width (μP's spectral condition), and at
    the base width a square matrix's step has the root-mean-square of the unorthogonalized
    one."""
    m = dualize.as_matrix(d, split)
    o = dualize.newton_schulz(m)
    fan_in, fan_out = m.shape
    scale = max(1.0, fan_out / fan_in) ** 0.5 * fan_in / float(base) ** 0.5
    return (scale * o).reshape(d.shape)
