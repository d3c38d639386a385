"""The random-feature regression problem of the study: exact population gradients and
losses, per-seed problems shared across N (nested features)."""

from __future__ import annotations

import jax
import numpy as np
import jax.numpy as jnp

from meta_train.models import RFRegressionSpec

NOISE = 0.1


def problem(s: float, seed: int, n_max: int, latent_dim: int):
    """(F [n_max, M] / sqrt(M), lambda [M], beta [M]) for one seed; deterministic. The
    spectrum and the draw are ``RFRegressionSpec``'s, the training tasks' definition."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), int(s * 1000))
    return RFRegressionSpec(latent_dim=latent_dim, s=s).problem(key, n_max)


def excess_loss(w, f, lam, beta):
    """``L(w) - sigma^2 / 2``: exact population excess loss."""
    r = f.T @ w - beta
    return 0.5 * jnp.sum(lam * r * r)


def top_eigenvalue(h, iters: int = 100):
    """lambda_max of a PSD matrix by power iteration (the spectrum decays as a power law, so
    lambda_2 / lambda_1 <= 2^-(1+s) and 100 iterations are exact to float precision)."""
    v = jnp.ones(h.shape[0], h.dtype) / np.sqrt(h.shape[0])

    def body(v, _):
        v = h @ v
        return v / jnp.linalg.norm(v), None
    v, _ = jax.lax.scan(body, v, None, length=iters)
    return v @ (h @ v)


class Problems:
    """Per-seed problems at one s, with H and b for the largest N computed once (every N uses
    the leading block: nested features). ``var``: a ``study.Variant`` (its ``n_values`` and
    ``latent_dim``)."""

    def __init__(self, s: float, var):
        self.s, self.var, self._cache = s, var, {}

    def get(self, seed: int):
        if seed not in self._cache:
            f, lam, beta = problem(self.s, seed, max(self.var.n_values), self.var.latent_dim)
            h = jax.jit(lambda f, lam: (f * lam) @ f.T)(f, lam)
            self._cache[seed] = (f, lam, beta, h, (f * lam) @ beta)
        return self._cache[seed]
