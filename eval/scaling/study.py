"""The study's orchestration: variants, LR tuning per (optimizer, N, s), report seeds."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from eval.scaling.fit import alpha_table
from eval.scaling.optimizers import GRIDS, OPTIMIZERS, curvature, make_optimizer
from eval.scaling.problem import NOISE, Problems, excess_loss


@dataclasses.dataclass(frozen=True)
class Variant:
    s_values: tuple[float, ...]
    n_values: tuple[int, ...]
    seeds: int                  # report seeds (plus one tuning seed)
    steps: int
    latent_dim: int = 4096
    grid_points: int = 7
    # alpha is fitted over N <= fit_max_n. As N approaches M the N random features span the
    # whole latent space and the loss of a converged optimizer collapses toward the floor
    # (a finite-M artifact, not a power law), so the fit stops at M / 4.
    fit_max_n: int = 1024


VARIANTS = {
    "smoke": Variant((1.0,), (16, 32, 64), seeds=2, steps=50, latent_dim=256, grid_points=3,
                     fit_max_n=64),
    "quick": Variant((0.5, 1.0, 2.0), (64, 128, 256, 512, 1024), seeds=3, steps=500),
    "full": Variant((0.5, 0.75, 1.0, 1.25, 1.5, 2.0), (64, 128, 256, 512, 1024, 2048, 4096),
                    seeds=5, steps=1000),
}

# LR grids (log-spaced); "rel" grids are multiplied by the optimizer's own 1/curvature.


def _centered(grid, k):
    if k >= len(grid):
        return list(grid)
    start = (len(grid) - k) // 2
    return list(grid[start:start + k])


def _train(name, pre, h, b, lr, steps, lo):
    opt = make_optimizer(name, lr, pre, lo)
    w0 = {"w": jnp.zeros(h.shape[0], jnp.float32)}

    def step(carry, _):
        w, st = carry
        u, st = opt.update({"w": h @ w["w"] - b}, st, w)
        return (optax.apply_updates(w, u), st), None
    (w, _), _ = jax.lax.scan(step, (w0, opt.init(w0)), None, length=steps)
    return w["w"]


def _run_seeds(pre, h, b, f, lam, beta, lrs, lo_theta, *, name, steps, lo_config):
    """Excess losses [lrs, seeds]: seeds stacked on axis 0 of pre/h/b/f/beta."""
    lo = None if lo_config is None else (lo_theta, lo_config)

    def one(pre, h, b, f, beta, lr):
        return excess_loss(_train(name, pre, h, b, lr, steps, lo), f, lam, beta)
    per_seed = jax.vmap(one, in_axes=(0, 0, 0, 0, 0, None))
    return jax.vmap(lambda lr: per_seed(pre, h, b, f, beta, lr))(lrs)


_run_seeds = jax.jit(_run_seeds, static_argnames=("name", "steps", "lo_config"))


def run_cell(name, probs: Problems, n, seeds, lrs, var: Variant, lo=None):
    """Excess losses [len(lrs), len(seeds)] of optimizer ``name`` at (s, N)."""
    cols = []
    for seed in seeds:
        f, lam, beta, h_max, b_max = probs.get(seed)
        pre, h, b = curvature(name, h_max[:n, :n], b_max[:n])
        cols.append((pre, h, b, f[:n], beta))
    stack = [jnp.stack(x) for x in zip(*cols)]
    vals = _run_seeds(stack[0], stack[1], stack[2], stack[3], lam, stack[4],
                      jnp.asarray(lrs, jnp.float32), None if lo is None else lo[0],
                      name=name, steps=var.steps, lo_config=None if lo is None else lo[1])
    vals = np.asarray(vals, np.float64)
    return np.where(np.isfinite(vals), vals, np.inf)


def run_study(variant: str, out: Path, lo_paths=(), progress=True) -> dict:
    from meta_train.progress import progress_bar
    var = VARIANTS[variant]
    los = {}
    for p in lo_paths:
        import lopt
        theta, config, _ = lopt.load_theta(p)
        label = "μLO" if config.mup else "SP LO"
        while label in los:
            label += "'"
        los[label] = (theta, config, p)
    names = list(OPTIMIZERS) + list(los)
    report_seeds = list(range(1, var.seeds + 1))
    raw = {}
    bar = progress_bar(len(var.s_values) * len(var.n_values) * len(names), desc="scaling",
                       unit="cell", enabled=progress)
    t0 = time.time()
    for s in var.s_values:
        probs = Problems(s, var)
        for name in names:
            for n in var.n_values:
                if name in los:
                    lo = los[name][:2]
                    rep = run_cell("lo", probs, n, report_seeds, [0.0], var, lo)[0]
                    best, tune = None, None
                else:
                    grid = _centered(GRIDS[name], var.grid_points)
                    tune = run_cell(name, probs, n, [0], grid, var)[:, 0]
                    best = float(grid[int(np.argmin(tune))])
                    rep = run_cell(name, probs, n, report_seeds, [best], var)[0]
                raw.setdefault(f"{s}", {}).setdefault(name, []).append(
                    {"n": n, "lr": best, "excess_loss": rep.tolist(),
                     "tune": None if tune is None else tune.tolist()})
                bar.update(1)
    bar.close()
    doc = {"variant": variant, "setup": dataclasses.asdict(var), "noise": NOISE,
           "noise_floor": NOISE ** 2 / 2, "report_seeds": report_seeds,
           "optimizers": names, "los": {k: v[2] for k, v in los.items()},
           "alpha": alpha_table(raw, var), "raw": raw, "seconds": time.time() - t0}
    return doc
