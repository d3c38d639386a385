"""Scaling-law study: how the optimizer changes the exponent alpha of L(N) ~ N^-alpha in
random-feature regression.

Setup (every choice, stated):

* Latent inputs ``x ~ N(0, diag(lambda))`` in R^M, M = 4096, with the power-law spectrum
  ``lambda_k = k^-(1+s)``, k = 1..M (the convention of ``meta_train.models.RFRegressionSpec``);
  s is the spectral condition, s in {0.5, 0.75, 1.0, 1.25, 1.5, 2.0}.
* Teacher ``y = x . beta + eps`` with ``beta_k ~ N(0, 1)`` i.i.d., so the target's power in
  eigendirection k is ``lambda_k beta_k^2 ~ k^-(1+s)`` (power-law coefficients), and label noise
  ``eps ~ N(0, sigma^2)``, sigma = 0.1.
* N random features ``phi(x) = F_N x / sqrt(M)``, F_N the first N rows of one fixed
  ``N_max x M`` standard Gaussian matrix per seed (nested features, so the N-grid shares
  randomness); model ``f(x) = phi(x) . w``, w in R^N is the parameter vector (N = parameter
  count), initialized at 0. N on a log2 grid: 64..4096 (``full``), 64..1024 (``quick``).
* Squared loss ``L(w) = E[(f(x) - y)^2] / 2``. Data regime: the population (infinite-data)
  limit. Every step uses the exact population gradient ``H w - b`` with
  ``H = F Lambda F^T / M`` and ``b = F Lambda beta / sqrt(M)``, and L is evaluated exactly as
  ``r^T Lambda r / 2 + sigma^2 / 2`` with ``r = F^T w / sqrt(M) - beta``; the noise floor is
  ``sigma^2 / 2`` exactly, so ``L - floor`` carries no sampling noise.
* A fixed step budget T (1000 ``full``, 500 ``quick``) for every optimizer and N.
* Optimizers: gradient descent; Adam; diagonal Fisher preconditioning (for squared loss the
  Fisher is H; its exact diagonal); a Shampoo-style Kronecker preconditioner on w reshaped to
  an [a, b] matrix (``L^-1/4 G R^-1/4`` with accumulated ``L = eps I + sum G G^T``,
  ``R = eps I + sum G^T G``); full natural gradient = damped Newton,
  ``(H + mu I)^-1 g`` with ``mu = 1e-6 lambda_max(H)``; and any learned optimizer given with
  ``--lo`` (w is a vector leaf; the LO gets no tuning).
* LR tuned per (optimizer, N, s) on a log grid on a tuning seed (0); reported on seeds 1..n
  (>= 5 in ``full``). GD's and diagonal's LRs are multiples of 1 / (preconditioned)
  lambda_max, natural gradient's are absolute (1 = Newton), Adam's and Shampoo's absolute.
* alpha: least squares of ``log(mean over seeds of L - floor)`` on ``log N`` over
  ``N <= M / 4`` (64..1024; larger N are run and plotted but not fitted: as N -> M the features
  span the latent space and converged losses collapse, a finite-M artifact); 95% confidence
  intervals from 1000 bootstrap resamples of the seeds. ``--refit scaling.json`` recomputes
  the table and plots from saved raw losses.

References: Ramani & Jain, "On the Optimizer Dependence of Neural Scaling Laws", arXiv
2605.29387; Bordelon, Atanasov & Pehlevan, "A Dynamical Model of Neural Scaling Laws",
arXiv 2402.01092.

Run ``python -m eval.scaling --variant quick`` (a few minutes on 2 cores) or ``--variant
full``; add ``--lo PATH`` to place a trained LO.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from eval.plots import save_axes_figure

NOISE = 0.1


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
GRIDS = {"gd": np.geomspace(1 / 32, 1.9, 7), "diag": np.geomspace(1 / 32, 1.9, 7),
         "ng": np.geomspace(1 / 16, 1.0, 7), "adam": np.geomspace(1e-4, 1e-1, 7),
         "shampoo": np.geomspace(1e-4, 1e-1, 7)}
OPTIMIZERS = ("gd", "adam", "diag", "shampoo", "ng")


def _centered(grid, k):
    if k >= len(grid):
        return list(grid)
    start = (len(grid) - k) // 2
    return list(grid[start:start + k])


def problem(s: float, seed: int, n_max: int, latent_dim: int):
    """(F [n_max, M] / sqrt(M), lambda [M], beta [M]) for one seed; deterministic."""
    kf, kb = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), int(s * 1000)))
    lam = jnp.arange(1, latent_dim + 1, dtype=jnp.float32) ** -(1.0 + s)
    f = jax.random.normal(kf, (n_max, latent_dim)) / np.sqrt(latent_dim)
    return f, lam, jax.random.normal(kb, (latent_dim,))


def excess_loss(w, f, lam, beta):
    """``L(w) - sigma^2 / 2``: exact population excess loss."""
    r = f.T @ w - beta
    return 0.5 * jnp.sum(lam * r * r)


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


def top_eigenvalue(h, iters: int = 100):
    """lambda_max of a PSD matrix by power iteration (the spectrum decays as a power law, so
    lambda_2 / lambda_1 <= 2^-(1+s) and 100 iterations are exact to float precision)."""
    v = jnp.ones(h.shape[0], h.dtype) / np.sqrt(h.shape[0])

    def body(v, _):
        v = h @ v
        return v / jnp.linalg.norm(v), None
    v, _ = jax.lax.scan(body, v, None, length=iters)
    return v @ (h @ v)


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


def _curvature(name, h, b):
    """(matrix the optimizer is built from, H, b) for one seed and N."""
    if name != "ng":
        return h, h, b
    hd = np.asarray(h, np.float64)
    mu = 1e-6 * np.linalg.eigvalsh(hd)[-1]
    inv = np.linalg.inv(hd + mu * np.eye(hd.shape[0]))    # float64: H is ill-conditioned
    return jnp.asarray(inv, jnp.float32), h, b


def _train(name, pre, h, b, lr, steps, lo):
    opt = make_optimizer(name, lr, pre, lo)
    w0 = {"w": jnp.zeros(h.shape[0], jnp.float32)}

    def step(carry, _):
        w, st = carry
        u, st = opt.update({"w": h @ w["w"] - b}, st, w)
        return (optax.apply_updates(w, u), st), None
    (w, _), _ = jax.lax.scan(step, (w0, opt.init(w0)), None, length=steps)
    return w["w"]


class Problems:
    """Per-seed problems at one s, with H and b for the largest N computed once (every N uses
    the leading block: nested features)."""

    def __init__(self, s: float, var: Variant):
        self.s, self.var, self._cache = s, var, {}

    def get(self, seed: int):
        if seed not in self._cache:
            f, lam, beta = problem(self.s, seed, max(self.var.n_values), self.var.latent_dim)
            h = jax.jit(lambda f, lam: (f * lam) @ f.T)(f, lam)
            self._cache[seed] = (f, lam, beta, h, (f * lam) @ beta)
        return self._cache[seed]


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
        pre, h, b = _curvature(name, h_max[:n, :n], b_max[:n])
        cols.append((pre, h, b, f[:n], beta))
    stack = [jnp.stack(x) for x in zip(*cols)]
    vals = _run_seeds(stack[0], stack[1], stack[2], stack[3], lam, stack[4],
                      jnp.asarray(lrs, jnp.float32), None if lo is None else lo[0],
                      name=name, steps=var.steps, lo_config=None if lo is None else lo[1])
    vals = np.asarray(vals, np.float64)
    return np.where(np.isfinite(vals), vals, np.inf)


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


def alpha_table(raw: dict, var: Variant) -> dict:
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


def write_outputs(doc: dict, out: Path, command: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lopt.provenance import commit as _commit

    out.mkdir(parents=True, exist_ok=True)
    doc = dict(doc, commit=_commit(), command=command)
    (out / "scaling.json").write_text(json.dumps(doc, indent=1))
    names, s_vals = doc["optimizers"], list(doc["alpha"])
    n_vals = doc["setup"]["n_values"]
    lines = [f"# Scaling-law study `{doc['variant']}`", "",
             f"alpha of L(N) - floor ~ N^-alpha fitted over N = {n_vals[0]}.."
             f"{min(n_vals[-1], doc['setup'].get('fit_max_n', n_vals[-1]))} (run up to "
             f"{n_vals[-1]}), "
             f"T = {doc['setup']['steps']} steps, M = {doc['setup']['latent_dim']}, "
             f"lambda_k = k^-(1+s), seeds {doc['report_seeds']}, 95% bootstrap CI; commit "
             f"`{doc['commit']}`; command `{command}`; {doc['seconds']:.0f} s.", "",
             "| s | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for s in s_vals:
        lines.append(f"| {s} | " + " | ".join(
            f"{doc['alpha'][s][n]['alpha']:.3f} [{doc['alpha'][s][n]['ci'][0]:.3f}, "
            f"{doc['alpha'][s][n]['ci'][1]:.3f}]" for n in names) + " |")
    (out / "scaling.md").write_text("\n".join(lines) + "\n")

    fig, axs = plt.subplots(1, len(s_vals), figsize=(4.2 * len(s_vals), 3.6), squeeze=False)
    for ax, s in zip(axs[0], s_vals):
        for name in names:
            rows = doc["raw"][s][name]
            ax.plot([r["n"] for r in rows], [np.mean(r["excess_loss"]) for r in rows], "o-",
                    label=f"{name} (α={doc['alpha'][s][name]['alpha']:.2f})", ms=3)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"s = {s}")
        ax.set_xlabel("N (parameters)")
        ax.set_ylabel("L - noise floor")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "loss_vs_n.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    sv = [float(s) for s in s_vals]
    for name in names:
        a = [doc["alpha"][s][name]["alpha"] for s in s_vals]
        lo = [doc["alpha"][s][name]["alpha"] - doc["alpha"][s][name]["ci"][0] for s in s_vals]
        hi = [doc["alpha"][s][name]["ci"][1] - doc["alpha"][s][name]["alpha"] for s in s_vals]
        ax.errorbar(sv, a, yerr=[lo, hi], marker="o", capsize=3, label=name)
    save_axes_figure(fig, ax, out / "alpha_vs_s.png", xlabel="spectral condition s",
                     ylabel="alpha")
    return ["scaling.md", "scaling.json", "loss_vs_n.png", "alpha_vs_s.png"]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m eval.scaling", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="quick", choices=sorted(VARIANTS),
                    help="smoke (seconds, tests), quick (minutes on 2 cores), full (the study)")
    ap.add_argument("--lo", action="append", default=[],
                    help="a trained learned optimizer to include (repeatable)")
    ap.add_argument("--out", default=None, help="output directory (default runs/scaling-<v>)")
    ap.add_argument("--refit", default=None, metavar="SCALING_JSON",
                    help="recompute the alpha table and plots from a saved scaling.json "
                         "(no training) with this version's fit range")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = ap.parse_args(argv)
    import lopt
    out = Path(args.out or f"runs/scaling-{args.variant}")
    try:
        if args.refit:
            doc = json.loads(Path(args.refit).read_text())
            setup = dict(doc["setup"])
            setup.setdefault("fit_max_n", VARIANTS[doc["variant"]].fit_max_n)
            setup = {k: tuple(v) if isinstance(v, list) else v for k, v in setup.items()}
            var = Variant(**setup)
            doc.update(setup=dataclasses.asdict(var), alpha=alpha_table(doc["raw"], var),
                       refit_of=doc.get("command"))
        else:
            doc = run_study(args.variant, out, args.lo, progress=not args.no_progress)
    except (lopt.CheckpointError, FileNotFoundError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    files = write_outputs(doc, out, "python -m eval.scaling " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])))
    print((out / "scaling.md").read_text())
    print(f"wrote {out}/" + ", ".join(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
