"""Hand-designed baselines as optax transformations, each taking the μP role tree.

A registry ``BASELINES``: name -> :class:`Baseline` (factory ``make(lr, roles)``, default
log LR grid for tuning, one-line description with its reference). Built from optax blocks;
the norm-based ones add a duality map from :mod:`lopt.dualize` between momentum and step.

References: Bernstein & Newhouse, "Old Optimizer, New Norm: An Anthology", arXiv 2409.20325.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt import dualize
from lopt.riemannian import riemannian_lowrank
from lopt.roles import fan_in
from lopt.schatten import adaptive_schatten


@dataclasses.dataclass(frozen=True)
class Baseline:
    make: Callable[[float, Any], optax.GradientTransformation]  # (lr, roles) -> optimizer
    lr_grid: tuple[float, ...]
    description: str
    # update() wants extra_args ``activations`` (layer inputs, see Task.activations)
    needs_activations: bool = False
    # which parametrization of a task it is run on in the eval suite ("mup" or "sp")
    parametrization: str = "mup"
    # each step computes a matrix function (Newton-Schulz, SVD, eigendecomposition) per weight:
    # cost ~ width^3, 10-20x an elementwise update at width 1024 on CPU
    matrix_functions: bool = False


def _log_grid(lo, hi, per_decade=2):
    n = int(round(np.log10(hi / lo) * per_decade)) + 1
    return tuple(float(f"{x:.3g}") for x in np.logspace(np.log10(lo), np.log10(hi), n))


def adamw(lr: float, roles: Any = None, weight_decay: float = 0.0):
    """optax.adamw (Loshchilov & Hutter, arXiv 1711.05101)."""
    del roles
    return optax.adamw(lr, weight_decay=weight_decay)


def muadam(lr: float, roles: Any):
    """Adam with μP per-role LR multipliers: hidden weights 1/fan_in, others 1
    (Yang et al., Tensor Programs V, arXiv 2203.03466, Table 3)."""
    def init_fn(params):
        return optax.scale_by_adam().init(params)

    def update_fn(updates, state, params=None):
        upd, state = optax.scale_by_adam().update(updates, state, params)
        upd = jax.tree.map(lambda u, r: u * (-lr / fan_in(u.shape) if r == "hidden" else -lr),
                           upd, roles)
        return upd, state

    return optax.GradientTransformation(init_fn, update_fn)


def sgdm(lr: float, roles: Any = None):
    """SGD with heavy-ball momentum 0.9."""
    del roles
    return optax.sgd(lr, momentum=0.9)


def signum(lr: float, roles: Any = None):
    """Sign descent with momentum 0.9 (Bernstein et al., arXiv 1802.04434)."""
    del roles
    return optax.signum(lr, beta=0.9)


def muon(lr: float, roles: Any, adam_lr: float | None = None):
    """Muon (Jordan et al.) via optax.contrib.muon on hidden matrices only; input, readout and
    non-matrix leaves go to AdamW with LR ``adam_lr`` (default lr / 10)."""
    dims = jax.tree.map(lambda r: optax.contrib.MuonDimensionNumbers() if r == "hidden"
                        else None, roles)
    return optax.contrib.muon(lr, adam_learning_rate=adam_lr if adam_lr else lr / 10,
                              muon_weight_dimension_numbers=dims, nesterov=True, beta=0.95)


def map_leaves(fn: Callable[[jax.Array, str], jax.Array], roles: Any):
    """A stateless transformation applying ``fn(update, role)`` leaf by leaf."""
    def update_fn(updates, state, params=None):
        del params
        if roles is None:
            return jax.tree.map(lambda u: fn(u, None), updates), state
        return jax.tree.map(fn, updates, roles), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def spectral(lr: float, roles: Any = None, momentum: float = 0.9, svd_max: int = 1024):
    """Spectral descent = Shampoo with accumulation off: every matrix steps along ``U V^T`` of
    its momentum (exact SVD when min(fan_in, fan_out) <= svd_max, else Muon's Newton-Schulz);
    vectors and scalars take sign steps (Adam with EMAs off). arXiv 2409.20325, sec. 3."""
    def direction(u, role):
        del role
        if u.ndim < 2:
            return jnp.sign(u)
        m = dualize.as_matrix(u)
        return dualize.orthogonalize(u, "svd" if min(m.shape) <= svd_max else "newton-schulz")
    return optax.chain(optax.trace(momentum), map_leaves(direction, roles), optax.scale(-lr))


def prodigy(lr: float, roles: Any = None):
    """Prodigy (optax.contrib): Adam with an estimated step size; ``lr`` multiplies the
    estimate (1 is the default). Mishchenko & Defazio, arXiv 2306.06101."""
    del roles
    opt = optax.contrib.prodigy(learning_rate=lr)

    def update_fn(updates, state, params=None, **extra):
        # prodigy promotes bf16 updates and its scalar state to f32; cast back so params and
        # state keep their dtypes (and jit does not recompile on the second step)
        upd, new = opt.update(updates, state, params, **extra)
        new = jax.tree.map(lambda n, o: n.astype(o.dtype), new, state)
        return jax.tree.map(lambda u, g: u.astype(g.dtype), upd, updates), new

    def init_fn(params):
        # its scalar step-size state takes the first leaf's dtype; keep it in f32
        state = opt.init(params)
        return state._replace(estim_lr=state.estim_lr.astype(jnp.float32),
                              numerator_weighted=state.numerator_weighted.astype(jnp.float32))
    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def modular(lr: float, roles: Any, momentum: float = 0.9, readout: str = "row",
            ortho: str = "newton-schulz", constrained: bool = False):
    """Modular-norm steepest descent: per-role duality maps of the momentum.

    hidden: ``sqrt(fan_out/fan_in) U V^T`` (spectral norm sqrt(fan_out/fan_in)); input and
    embedding: each input feature's row to unit RMS; readout: each output column to RMS
    1/fan_in (``readout="sign"``: sign/fan_in); vectors: unit RMS. ``constrained=True`` adds
    ``-lr * W`` (Scion's constrained form: the weights stay in a norm ball).
    References: modula (Large et al., arXiv 2405.14813); Scion, arXiv 2502.07529.
    """
    def direction(u, role):
        if u.ndim < 2 or role == "vector":
            return dualize.rms_normalize(u)
        if role == "input":
            return dualize.input_direction(u)
        if role == "output":
            return dualize.readout_direction(u, readout)
        m = dualize.as_matrix(u)
        return (m.shape[1] / m.shape[0]) ** 0.5 * dualize.orthogonalize(u, ortho)
    chain = [optax.trace(momentum), map_leaves(direction, roles)]
    if constrained:
        chain.append(optax.add_decayed_weights(1.0))
    return optax.chain(*chain, optax.scale(-lr))


BASELINES: dict[str, Baseline] = {
    "adamw": Baseline(adamw, _log_grid(1e-4, 3e-2), "AdamW (optax), arXiv 1711.05101",
                      parametrization="sp"),
    "muadam": Baseline(muadam, _log_grid(1e-3, 3e-1),
                       "Adam with μP LR multipliers (hidden 1/fan_in), arXiv 2203.03466"),
    "sgdm": Baseline(sgdm, _log_grid(1e-3, 1.0), "SGD, momentum 0.9", parametrization="sp"),
    "signum": Baseline(signum, _log_grid(1e-5, 1e-2), "sign descent with momentum, "
                       "arXiv 1802.04434", parametrization="sp"),
    "muon": Baseline(muon, _log_grid(1e-3, 3e-1), "Muon (optax.contrib), hidden matrices; "
                     "AdamW elsewhere; arXiv 2409.20325", matrix_functions=True),
    "spectral": Baseline(spectral, _log_grid(1e-3, 3e-1), "spectral descent (Shampoo without "
                         "accumulation): U V^T of the momentum, arXiv 2409.20325",
                         matrix_functions=True),
    "prodigy": Baseline(prodigy, _log_grid(1e-1, 3.0), "Prodigy (optax.contrib), "
                        "arXiv 2306.06101", parametrization="sp"),
    "modular": Baseline(modular, _log_grid(1e-3, 3e-1), "modular-norm steepest descent, "
                        "per-role duality maps (modula/Scion), arXiv 2405.14813",
                        matrix_functions=True),
    "schatten": Baseline(adaptive_schatten, _log_grid(1e-3, 3e-1),
                         "adaptive Schatten-p descent, p per layer from gradient and input "
                         "activations, arXiv 2605.19781", needs_activations=True,
                         matrix_functions=True),
    "riemannian": Baseline(riemannian_lowrank,
                           _log_grid(1e-2, 3.0),
                           "Riemannian fixed-rank descent on factored W = A B^T, AdamW "
                           "elsewhere, arXiv 2606.02328", matrix_functions=True),
}
