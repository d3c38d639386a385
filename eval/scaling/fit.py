"""The exponent fit: least squares on log-log, seed-bootstrap confidence intervals."""

from __future__ import annotations

import numpy as np


def fit_alpha(n_values, losses) -> float:
    """Least-squares slope of log(loss) on log(N), negated: L ~ N^-alpha."""
    x = np.log(np.asarray(n_values, np.float64))
    y = np.log(np.asarray(losses, np.float64))
    return float(-np.polyfit(x, y, 1)[0])


def bootstrap_alpha(n_values, per_seed, reps=1000, seed=0):
    """alpha of the seed-mean curve with a 95% bootstrap CI over seeds.

    per_seed: [len(n_values), seeds] excess losses."""
    per_seed = np.asarray(per_seed, np.float64)
    rng = np.random.default_rng(seed)
    k = per_seed.shape[1]
    boots = [fit_alpha(n_values, per_seed[:, rng.integers(0, k, k)].mean(1))
             for _ in range(reps)]
    return fit_alpha(n_values, per_seed.mean(1)), float(np.percentile(boots, 2.5)), \
        float(np.percentile(boots, 97.5))


def alpha_table(raw: dict, var) -> dict:
    """alpha with CI per (s, optimizer), fitted over N <= var.fit_max_n."""
    table = {}
    for s, per_opt in raw.items():
        for name, rows in per_opt.items():
            rows = [r for r in rows if r["n"] <= var.fit_max_n]
            per_seed = np.array([r["excess_loss"] for r in rows])
            if np.all(np.isfinite(per_seed)) and np.all(per_seed > 0):
                a, lo_ci, hi_ci = bootstrap_alpha([r["n"] for r in rows], per_seed)
            else:
                a = lo_ci = hi_ci = float("nan")
            table.setdefault(s, {})[name] = {"alpha": a, "ci": [lo_ci, hi_ci]}
    return table
