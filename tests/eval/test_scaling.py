"""Scaling-law study: exponent fit, optimizer ordering, and the command end to end."""

import json

import numpy as np
import pytest

from eval import scaling as SC
from eval.scaling.cli import main as scaling_main


def test_fit_recovers_a_constructed_power_law():
    n = np.array([64, 128, 256, 512, 1024, 2048, 4096])
    for alpha in (0.3, 0.77, 1.5, 2.25):
        assert abs(SC.fit_alpha(n, 3.7 * n ** -alpha) - alpha) < 1e-3
    # noisy seeds: the point estimate stays close and the 95% bootstrap CI covers the truth
    # in most of 40 independent draws (a seed bootstrap with 8 seeds undercovers a little)
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(40):
        per_seed = (2.0 * n ** -0.9)[:, None] * np.exp(0.05 * rng.normal(size=(len(n), 8)))
        a, lo, hi = SC.bootstrap_alpha(n, per_seed, reps=200, seed=int(rng.integers(1 << 30)))
        assert abs(a - 0.9) < 0.03 and lo <= a <= hi and hi - lo < 0.1
        covered += lo <= 0.9 <= hi
    assert covered >= 30, covered


def test_excess_loss_is_exact():
    f, lam, beta = SC.problem(1.0, 0, 8, 32)
    import jax.numpy as jnp
    w = jnp.linspace(-1, 1, 8)
    r = np.asarray(f).T @ np.asarray(w) - np.asarray(beta)
    assert float(SC.excess_loss(w, f, lam, beta)) == pytest.approx(
        0.5 * np.sum(np.asarray(lam) * r * r), rel=1e-5)
    # at w = 0 it is half the target's signal power
    assert float(SC.excess_loss(jnp.zeros(8), f, lam, beta)) == pytest.approx(
        0.5 * float(np.sum(np.asarray(lam) * np.asarray(beta) ** 2)), rel=1e-6)


def test_natural_gradient_beats_gd_at_equal_steps_when_ill_conditioned():
    var = SC.Variant((2.0,), (128,), seeds=2, steps=100, latent_dim=512, grid_points=7)
    probs = SC.Problems(2.0, var)
    best = {}
    for name in ("gd", "ng"):
        losses = SC.run_cell(name, probs, 128, [1, 2], SC.GRIDS[name], var)
        best[name] = np.min(losses.mean(1))
    assert best["ng"] < 0.1 * best["gd"], best


@pytest.mark.slow
def test_quick_variant_end_to_end(tmp_path):
    rc = scaling_main(["--variant", "quick", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    for f in ("scaling.md", "scaling.json", "loss_vs_n.png", "alpha_vs_s.png"):
        assert (tmp_path / f).stat().st_size > 0
    doc = json.loads((tmp_path / "scaling.json").read_text())
    assert set(doc["alpha"]) == {"0.5", "1.0", "2.0"}
    for s, row in doc["alpha"].items():
        for name in SC.OPTIMIZERS:
            r = row[name]
            assert np.isfinite(r["alpha"]) and r["ci"][0] <= r["alpha"] <= r["ci"][1]
        raw = doc["raw"][s]["gd"]
        assert [x["n"] for x in raw] == [64, 128, 256, 512, 1024]
        assert all(len(x["excess_loss"]) == 3 for x in raw)
    md = (tmp_path / "scaling.md").read_text()
    assert "| 1.0 |" in md and "ng" in md


@pytest.mark.slow
def test_a_learned_optimizer_joins_the_study(tmp_path):
    import jax
    import lopt
    lopt.save(tmp_path / "lo", lopt.init_theta(jax.random.PRNGKey(0)), lopt.MULO)
    rc = scaling_main(["--variant", "smoke", "--lo", str(tmp_path / "lo"), "--out",
                  str(tmp_path / "out"), "--no-progress"])
    assert rc == 0
    doc = json.loads((tmp_path / "out" / "scaling.json").read_text())
    rows = doc["raw"]["1.0"]["μLO"]
    assert [r["n"] for r in rows] == [16, 32, 64] and all(r["lr"] is None for r in rows)
    # an untrained LO barely moves w from 0: its excess loss stays near the start value
    f, lam, beta = SC.problem(1.0, 1, 64, 256)
    start = 0.5 * float(np.sum(np.asarray(lam) * np.asarray(beta) ** 2))
    assert 0.5 * start < rows[0]["excess_loss"][0] <= start * 1.01
    assert "μLO" in (tmp_path / "out" / "scaling.md").read_text()
    assert scaling_main(["--variant", "smoke", "--lo", str(tmp_path / "missing"), "--out",
                    str(tmp_path / "o2"), "--no-progress"]) == 2
