"""The shipped checkpoints load by name and train a wide 28x28 Fashion-MNIST MLP."""

import jax
import numpy as np
import pytest

import lopt
from lopt.checkpoint import shipped_dir
from meta_train.data import fashion_mnist_dir
from meta_train.inner import train
from meta_train.tasks import get_task

SHIPPED = {"mulo-cpu": True, "sp-lo-cpu": False}     # name -> μP (the `cpu` recipe pair)


def test_shipped_names_and_cards():
    names = sorted(p.name for p in shipped_dir().glob("*") if (p / "lopt.json").is_file())
    assert names == sorted([*SHIPPED, "mulo-frac-cpu", "mulo-base-cpu"])
    for name, mup in SHIPPED.items():
        theta, config, meta = lopt.load_theta(name)
        assert config.mup is mup and meta["step"] == 1000
        card = (shipped_dir() / name / "MODEL_CARD.md").read_text()
        assert "wall time" in card and "python -m meta_train --preset cpu" in card
        # "checkpoints/<name>" resolves from any working directory too
        same, _, _ = lopt.load_theta(f"checkpoints/{name}")
        np.testing.assert_array_equal(same["nn"]["w0"], theta["nn"]["w0"])


@pytest.mark.slow
@pytest.mark.skipif(fashion_mnist_dir() is None,
                    reason="28x28 Fashion-MNIST needs dataset-fashion-mnist")
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_lo_trains_a_width_2048_fmnist28_mlp(name):
    # The README's claim: at 16x its widest meta-training width, on 28x28 inputs, μLO reaches
    # loss ~0.50 / ~78% test accuracy in 100 steps; the SP LO stays finite but at chance.
    task = get_task("mlp-fmnist28-w2048-d3" + ("" if SHIPPED[name] else "-sp"))
    assert task.num_params() > 9_000_000
    opt = lopt.load(name, roles=task.roles, mup_in="model")   # the task carries μP itself
    res = jax.jit(lambda k: train(task, opt, key=k, num_steps=100))(jax.random.PRNGKey(0))
    losses = np.asarray(res.losses)
    assert not bool(res.diverged) and np.all(np.isfinite(losses))
    final, acc = float(np.mean(losses[-10:])), float(res.test_accuracy[-1])
    if SHIPPED[name]:
        assert final < 0.6 and acc > 0.72, (final, acc)
    else:
        assert acc < 0.2, (final, acc)


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
    # The README's claim for the μP base width: at 8x its widest meta-training width the
    # base-512 μLO ends clearly below mulo-frac-cpu (absolute 1/fan_in), 300 steps, seed 1.
    theta, config, meta = lopt.load_theta("mulo-base-cpu")
    assert config.mup_base == 512.0 and config.depth_ref == 2 and config.needs_num_steps
    card = (shipped_dir() / "mulo-base-cpu" / "MODEL_CARD.md").read_text()
    assert "--preset cpu-base" in card and "num_steps=T" in card
    task = get_task("mlp-fmnist8-w1024-d3")
    finals = {}
    for name in ("mulo-base-cpu", "mulo-frac-cpu"):
        opt = lopt.load(name, roles=task.roles, mup_in="model", num_steps=300)
        res = jax.jit(lambda k: train(task, opt, key=k, num_steps=300))(jax.random.PRNGKey(1))
        assert not bool(res.diverged)
        finals[name] = float(np.mean(np.asarray(res.losses)[-15:]))
    assert finals["mulo-base-cpu"] < 0.93 * finals["mulo-frac-cpu"], finals
