"""The shipped `cpu` recipe pair on a 16x wider 28x28 Fashion-MNIST MLP: the μLO trains, its SP
twin stays at chance (the μLO paper's claim)."""

import jax
import numpy as np
import pytest

import lopt
from meta_train.inner import train
from meta_train.tasks import get_task
from needs_data import FMNIST, needs_data

SHIPPED = {"mulo-cpu": True, "sp-lo-cpu": False}     # name -> μP (the `cpu` recipe pair)


@pytest.mark.slow
@needs_data(FMNIST)
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
