"""Hand-designed baselines as optax transformations, each taking the μP role tree.

A registry ``BASELINES``: name -> :class:`Baseline` (factory ``make(lr, roles)``, default
log LR grid for tuning, one-line description with its reference). Built from optax blocks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
import optax

from lopt.roles import fan_in


@dataclasses.dataclass(frozen=True)
class Baseline:
    make: Callable[[float, Any], optax.GradientTransformation]  # (lr, roles) -> optimizer
    lr_grid: tuple[float, ...]
    description: str


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
    return optax.chain(optax.trace(0.9), optax.scale_by_sign(), optax.scale(-lr))


def muon(lr: float, roles: Any, adam_lr: float | None = None):
    """Muon (Jordan et al.) via optax.contrib.muon on hidden matrices only; input, readout and
    non-matrix leaves go to AdamW with LR ``adam_lr`` (default lr / 10)."""
    dims = jax.tree.map(lambda r: optax.contrib.MuonDimensionNumbers() if r == "hidden"
                        else None, roles)
    return optax.contrib.muon(lr, adam_learning_rate=adam_lr if adam_lr else lr / 10,
                              muon_weight_dimension_numbers=dims, nesterov=True, beta=0.95)


BASELINES: dict[str, Baseline] = {
    "adamw": Baseline(adamw, _log_grid(1e-4, 3e-2), "AdamW (optax), arXiv 1711.05101"),
    "muadam": Baseline(muadam, _log_grid(1e-3, 3e-1),
                       "Adam with μP LR multipliers (hidden 1/fan_in), arXiv 2203.03466"),
    "sgdm": Baseline(sgdm, _log_grid(1e-3, 1.0), "SGD, momentum 0.9"),
    "signum": Baseline(signum, _log_grid(1e-5, 1e-2), "sign descent with momentum, "
                       "arXiv 1802.04434"),
    "muon": Baseline(muon, _log_grid(1e-3, 3e-1), "Muon (optax.contrib), hidden matrices; "
                     "AdamW elsewhere; arXiv 2409.20325"),
}
