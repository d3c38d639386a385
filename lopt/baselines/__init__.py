"""Hand-designed optimizers, each an optax transformation taking the μP role tree: the
``BASELINES`` registry and its factories (:mod:`~lopt.baselines.optimizers`), and the matrix
functions and norm-based optimizers they build on: duality maps
(:mod:`~lopt.baselines.dualize`), adaptive Schatten-p (:mod:`~lopt.baselines.schatten`) and
Riemannian low-rank steps (:mod:`~lopt.baselines.riemannian`).

References: Bernstein & Newhouse, "Old Optimizer, New Norm: An Anthology", arXiv 2409.20325.
"""

from lopt.baselines.optimizers import (BASELINES, SCHEDULES, Baseline, adamw, modular, muadam,
                                       muon, prodigy, sgdm, signum, spectral, warmup_cosine)
from lopt.baselines.riemannian import riemannian_lowrank
from lopt.baselines.schatten import adaptive_schatten

__all__ = [
    "BASELINES", "SCHEDULES", "Baseline", "adamw", "modular", "muadam", "muon", "prodigy",
    "sgdm", "signum", "spectral", "warmup_cosine", "riemannian_lowrank", "adaptive_schatten",
]
