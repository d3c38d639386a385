"""The shipped checkpoints load by name, and each trains as its model card says (the wide
28x28 claims are in test_shipped_wide.py, a file of their own so the test workers share the
load)."""

import dataclasses

import jax
import numpy as np
import pytest

import lopt
from lopt.io.checkpoint import shipped_dir
from meta_train.inner import train
from meta_train.tasks import get_task

SHIPPED = {"mulo-cpu": True, "sp-lo-cpu": False}     # name -> μP (the `cpu` recipe pair)


def _final_loss(name: str, task_name: str, steps: int, may_diverge: bool = False) -> float:
    """A shipped LO's final train loss (mean of the last 5% of steps) on a task, seed 1
    (inf if it diverged, which fails the test unless ``may_diverge``)."""
    task = get_task(task_name)
    opt = lopt.load(name, roles=task.roles, mup_in="model", num_steps=steps)
    needs_loss = lopt.load_theta(name)[1].needs_loss          # μVeLO reads each step's loss
    res = jax.jit(lambda k: train(task, opt, key=k, num_steps=steps, pass_loss=needs_loss))(
        jax.random.PRNGKey(1))
    assert may_diverge or not bool(res.diverged), name
    return float(np.mean(np.asarray(res.losses)[-max(1, steps // 20):]))


def test_shipped_names_and_cards():
    names = sorted(p.name for p in shipped_dir().glob("*") if (p / "lopt.json").is_file())
    assert names == sorted([*SHIPPED, "mulo-frac-cpu", "mulo-base-cpu", "mulo-horizon-cpu",
                            "mulo-compact-cpu", "mulo-compact-mlp-cpu", "muvelo-cpu",
                            "sp-velo-cpu"])
    for name, mup in SHIPPED.items():
        theta, config, meta = lopt.load_theta(name)
        assert config.mup is mup and meta["step"] == 1000
        card = (shipped_dir() / name / "MODEL_CARD.md").read_text()
        assert "wall time" in card and "python -m meta_train --preset cpu" in card
        # "checkpoints/<name>" resolves from any working directory too
        same, _, _ = lopt.load_theta(f"checkpoints/{name}")
        np.testing.assert_array_equal(same["nn"]["w0"], theta["nn"]["w0"])


@pytest.mark.slow
def test_mulo_frac_cpu_needs_the_run_length_and_trains():
    theta, config, meta = lopt.load_theta("mulo-frac-cpu")
    assert config.needs_num_steps and config.time_features == "fraction" and meta["step"] == 800
    card = (shipped_dir() / "mulo-frac-cpu" / "MODEL_CARD.md").read_text()
    assert "--preset cpu-frac" in card and 'num_steps=T' in card
    task = get_task("mlp-fmnist8-w128-d3")
    with pytest.raises(lopt.NumStepsError):
        train(task, lopt.load("mulo-frac-cpu", roles=task.roles, mup_in="model"),
              key=jax.random.PRNGKey(0), num_steps=2)
    # 300 steps in distribution: it trains well past the loss mulo-cpu reaches (dev suite).
    res = jax.jit(lambda k: train(task, lopt.load("mulo-frac-cpu", roles=task.roles,
                                                  mup_in="model", num_steps=300),
                                  key=k, num_steps=300))(jax.random.PRNGKey(1))
    losses = np.asarray(res.losses)
    assert not bool(res.diverged) and float(np.mean(losses[-10:])) < 0.2 * losses[0] + 0.1


@pytest.mark.slow
def test_mulo_base_cpu_trains_a_wide_mlp_better_than_the_absolute_mup_lo():
    # The μP base width's claim: at 4x its widest meta-training width the base-512 μLO ends
    # clearly below mulo-frac-cpu (absolute 1/fan_in), 300 steps, seed 1 (0.384 vs 0.427
    # here; at 8x, 150 steps: 0.442 vs 0.495).
    theta, config, meta = lopt.load_theta("mulo-base-cpu")
    assert config.mup_base == 512.0 and config.depth_ref == 2 and config.needs_num_steps
    card = (shipped_dir() / "mulo-base-cpu" / "MODEL_CARD.md").read_text()
    assert "--preset cpu-base" in card and "num_steps=T" in card
    finals = {name: _final_loss(name, "mlp-fmnist8-w512-d3", 300)
              for name in ("mulo-base-cpu", "mulo-frac-cpu")}
    assert finals["mulo-base-cpu"] < 0.93 * finals["mulo-frac-cpu"], finals


@pytest.mark.slow
def test_mulo_horizon_cpu_is_mulo_base_cpu_with_smaller_steps_on_long_runs():
    # mulo-horizon-cpu = mulo-base-cpu's theta + the horizon rule (step x (500/T)^0.3 for
    # T > 500): identical up to 500 steps, and on a 10x longer run it ends well below it
    # (dev probe, seed 1: 0.203 vs 0.260).
    theta, config, meta = lopt.load_theta("mulo-horizon-cpu")
    base_theta, base_config, _ = lopt.load_theta("mulo-base-cpu")
    assert (config.horizon_ref, config.horizon_power) == (500, 0.3)
    assert meta["derived_from"] == "mulo-base-cpu"
    assert jax.tree.all(jax.tree.map(np.array_equal, theta, base_theta))
    assert dataclasses.replace(config, horizon_ref=0, horizon_power=0.0) == base_config
    card = (shipped_dir() / "mulo-horizon-cpu" / "MODEL_CARD.md").read_text()
    assert "horizon_ref=500" in card and "num_steps=T" in card
    finals = {name: _final_loss(name, "mlp-fmnist8-w128-d3", 5000)
              for name in ("mulo-horizon-cpu", "mulo-base-cpu")}
    assert finals["mulo-horizon-cpu"] < 0.9 * finals["mulo-base-cpu"], finals


def test_every_shipped_checkpoint_installs_with_the_package():
    # a non-editable `pip install` finds shipped checkpoints under share/mulo/checkpoints
    # only if pyproject.toml lists each directory
    import tomllib
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    files = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "data-files"]
    names = sorted(p.name for p in (root / "checkpoints").glob("*")
                   if (p / "lopt.json").is_file())
    assert len(names) >= 5
    for name in names:
        assert files.get(f"share/mulo/checkpoints/{name}") == [f"checkpoints/{name}/*"], name


@pytest.mark.slow
def test_muvelo_cpu_beats_the_mulo_of_the_same_budget_5x_deeper():
    # The README's μVeLO claim on the full suite's 5x deeper cell (seeds 1-3: 0.474 vs
    # mulo-cpu's 0.536, std <= 0.007): seed 1 here, 500 steps.
    theta, config, meta = lopt.load_theta("muvelo-cpu")
    assert config.arch == "velo" and config.mup and config.needs_loss and meta["step"] == 600
    card = (shipped_dir() / "muvelo-cpu" / "MODEL_CARD.md").read_text()
    assert "--preset velo-cpu" in card and "num_steps=T" in card
    finals = {name: _final_loss(name, "mlp-fmnist8-w128-d15", 500)
              for name in ("muvelo-cpu", "mulo-cpu")}
    assert finals["muvelo-cpu"] < 0.93 * finals["mulo-cpu"], finals
    assert finals["muvelo-cpu"] < 0.5, finals


@pytest.mark.slow
def test_muvelo_cpu_trains_2x_wider_where_its_sp_twin_does_not():
    # The μLO paper's claim for VeLO: with μP the same architecture and meta-training
    # generalize to wider networks; in SP they do not (full suite, 8x wider: 0.416 vs 2.32).
    # Here the held-out validation width 256 (2x the widest meta-training task), seed 1.
    _, config, meta = lopt.load_theta("sp-velo-cpu")
    assert config.arch == "velo" and not config.mup and meta["step"] == 600
    mu = _final_loss("muvelo-cpu", "mlp-fmnist8-w256-d3", 500)
    sp = _final_loss("sp-velo-cpu", "mlp-fmnist8-w256-d3-sp", 500, may_diverge=True)
    assert mu < 0.45 and sp > 2 * mu, (mu, sp)


@pytest.mark.slow   # 10-30 s: make test runs it, the fast tier does not
def test_mulo_compact_cpu_needs_the_run_length_and_trains_an_mlp():
    theta, config, meta = lopt.load_theta("mulo-compact-cpu")
    assert config.features == "compact" and config.needs_num_steps and meta["step"] == 1000
    card = (shipped_dir() / "mulo-compact-cpu" / "MODEL_CARD.md").read_text()
    assert "--preset compact-cpu" in card and "## Status" in card
    # 300 steps of an MLP it did not train on: from ln 10 = 2.30 to about 0.41 (seed 1)
    assert _final_loss("mulo-compact-cpu", "mlp-fmnist8-w128-d3", 300) < 0.45


@pytest.mark.slow   # 10-30 s: make test runs it, the fast tier does not
def test_mulo_compact_mlp_cpu_is_the_compact_recipe_on_mlps_and_trains_past_it():
    from meta_train.config import PRESETS
    theta, config, meta = lopt.load_theta("mulo-compact-mlp-cpu")
    assert config == lopt.load_theta("mulo-compact-cpu")[1] and meta["step"] == 1000
    want = PRESETS["compact-mlp-cpu"]
    assert want.lo == config and want.tasks == PRESETS["compact-cpu"].tasks[:3]
    assert want.es.num_pairs == 7
    card = (shipped_dir() / "mulo-compact-mlp-cpu" / "MODEL_CARD.md").read_text()
    assert "## Status" in card and "--es.num_pairs 7" in card
    # 300 steps of an MLP it did not train on (seed 1): below the 5-task recipe's loss there
    mlp = _final_loss("mulo-compact-mlp-cpu", "mlp-fmnist8-w128-d3", 300)
    mix = _final_loss("mulo-compact-cpu", "mlp-fmnist8-w128-d3", 300)
    assert mlp < mix < 0.45, (mlp, mix)
