"""A trained μLO in users' own Flax models and loops (eval.clients): it trains as well as
AdamW at its default LR, on offline data, with μP applied on the optimizer side."""

import numpy as np
import optax
import pytest

import lopt
from eval.clients import final_loss, make_client, train_client


pytestmark = pytest.mark.slow   # real training loops, ~1-2 min each

MULO = lopt.load("mulo-cpu")


def _pair(kind, width, steps, mup_init=True):
    client = make_client(kind, width=width, steps=steps)
    lo = train_client(client, MULO, seed=1, mup_init=mup_init)
    adam = train_client(client, optax.adamw(1e-3), seed=1)
    return lo, adam


def test_plain_flax_mlp_on_digits():
    # measured (300 steps, width 256): μLO 0.006 (μP init) / 0.024 (Flax init), AdamW 0.005
    lo, adam = _pair("mlp", 256, 300)
    assert lo[0] > 2.0 and final_loss(lo) <= 2 * final_loss(adam) + 0.01, (
        final_loss(lo), final_loss(adam))


def test_flax_cnn_on_digits():
    # measured (150 steps, 8 channels): see the assertion message on failure
    lo, adam = _pair("cnn", 8, 150)
    assert final_loss(lo) < 0.5 * lo[0]
    assert final_loss(lo) <= final_loss(adam) + 0.01, (final_loss(lo), final_loss(adam))


def test_flax_transformer_lm():
    # measured (300 steps, d 64): μLO 2.41, AdamW 2.55 (from ~4.9)
    lo, adam = _pair("lm", 64, 150)
    assert final_loss(lo) < 0.7 * lo[0]
    assert final_loss(lo) <= final_loss(adam) + 0.05, (final_loss(lo), final_loss(adam))


def test_lo_that_needs_the_run_length_says_so():
    import dataclasses
    theta, config, _ = lopt.load_theta("mulo-cpu")
    opt = lopt.make_from_config(theta, dataclasses.replace(config, schedule="cosine"))
    client = make_client("mlp", width=16, steps=3)
    with pytest.raises(lopt.NumStepsError, match="num_steps=T"):
        train_client(client, opt, seed=0)
    losses = train_client(client, lopt.make_from_config(
        theta, dataclasses.replace(config, schedule="cosine"), num_steps=3), seed=0)
    assert np.all(np.isfinite(losses))
