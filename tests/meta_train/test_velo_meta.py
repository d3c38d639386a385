"""μVeLO through the meta-training and eval machinery: presets, config files, checkpoints,
the loss passed to the inner step, and an end-to-end smoke run."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt
from eval.suite import Runner, load_los
from meta_train.config import PRESETS, MetaTrainConfig, apply_overrides
from meta_train.inner import train
from meta_train.loop import run
from meta_train.tasks import get_task


def test_velo_presets_round_trip_override_and_have_an_sp_twin():
    cfg = PRESETS["velo-cpu"]
    assert cfg.lo.arch == "velo" and cfg.lo.mup
    assert MetaTrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["lo"]["arch"] == "velo"
    small = apply_overrides(cfg, [("lo.lstm_hidden", "8"), ("es.num_pairs", "4")])
    assert isinstance(small.lo, lopt.VeLOConfig) and small.lo.lstm_hidden == 8
    sp = PRESETS["velo-cpu-sp"]
    assert sp.lo.arch == "velo" and not sp.lo.mup
    assert all(t.endswith("-sp") for t in sp.tasks)
    # μLO configs keep the layout older runs wrote (no "arch" key)
    assert "arch" not in PRESETS["cpu"].to_dict()["lo"]
    with pytest.raises(ValueError, match="arch"):
        lopt.config_from_dict({"arch": "transformer"})


def test_velo_checkpoint_round_trips_and_loads_as_velo(tmp_path):
    cfg = PRESETS["velo-cpu"].lo
    theta = lopt.init_velo_theta(jax.random.key(3), cfg)
    lopt.save(tmp_path, theta, cfg, {"name": "t"})
    back, back_cfg, _ = lopt.load_theta(tmp_path)
    assert back_cfg == cfg
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(theta),
                                                      jax.tree.leaves(back)))
    task = get_task("mlp-digits8-w16-d2")
    opt = lopt.load(tmp_path, roles=task.roles, mup_in="model", num_steps=20)
    params = task.init(jax.random.key(0))
    state = opt.init(params)
    assert isinstance(state, lopt.learned.velo.VeLOState)
    # the inner loop passes the loss only when asked; VeLO says it needs it
    with pytest.raises(ValueError, match="value=loss"):
        train(task, opt, key=jax.random.key(0), num_steps=2)
    res = train(task, opt, key=jax.random.key(0), num_steps=2, pass_loss=cfg.needs_loss)
    assert np.all(np.isfinite(np.asarray(res.losses)))


def test_cpu_constants_start_muvelo_where_mulo_starts():
    """The velo presets' interp_mult sqrt(8) and step_mult 1e-2: at init the bank MLP has
    zero biases and ReLUs, so its outputs scale exactly as interp_mult^3 (3 weight layers),
    and the first update is 10 x 8^1.5 ~ 226x the reference constants'. That puts it within
    a few x of a random μLO's first update, which meta-training from scratch can work with."""
    task = get_task("mlp-fmnist8-w128-d3")
    params = task.init(jax.random.key(0))
    loss, g = jax.value_and_grad(task.loss)(params, task.sample(task.data, jax.random.key(1),
                                                                 "train"))

    def first_update_rms(cfg):
        """jitted theta -> RMS of each matrix's first update (one compile per config)."""
        def f(theta):
            opt = lopt.make_from_config(theta, cfg, roles=task.roles, mup_in="model",
                                        num_steps=100)
            u, _ = opt.update(g, opt.init(params), params, value=loss)
            return jnp.stack([jnp.sqrt(jnp.mean(jnp.square(x))) for x in jax.tree.leaves(u)
                              if x.ndim == 2])
        return jax.jit(f)

    ref_f, cpu_f = first_update_rms(lopt.MUVELO), first_update_rms(PRESETS["velo-cpu"].lo)
    mulo_f = first_update_rms(lopt.MULO)
    ratios = []
    for seed in range(3):
        th = lopt.init_velo_theta(jax.random.key(seed))
        cpu = np.asarray(cpu_f(th))
        np.testing.assert_allclose(cpu / np.asarray(ref_f(th)), 10 * math.sqrt(8) ** 3,
                                   rtol=0.01)
        ratios.append(cpu / np.asarray(mulo_f(lopt.init_theta(jax.random.key(seed)))))
    gm = float(np.exp(np.mean(np.log(ratios))))
    assert 0.25 < gm < 4.0, gm


@pytest.mark.slow
def test_velo_smoke_meta_training_checkpoints_and_runs_in_the_suite(tmp_path):
    cfg = dataclasses.replace(PRESETS["velo-smoke"], outer_steps=5, validate_every=2)
    res = run(cfg, tmp_path / "run", progress=False, stop_after=4)
    assert res["step"] == 4 and math.isfinite(res["metrics"]["meta_loss"])
    theta, config, meta = lopt.load_theta(tmp_path / "run")
    assert config == cfg.lo
    start = lopt.init_velo_theta(jax.random.split(jax.random.PRNGKey(cfg.seed), 3)[0], cfg.lo)
    moved = sum(float(jnp.sum(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(theta),
                                                                jax.tree.leaves(start)))
    assert moved > 0
    # resuming continues from step 4
    res2 = run(cfg, tmp_path / "run", resume=True, progress=False)
    assert res2["step"] == 5
    # the eval suite builds it from its checkpoint, tells it T and feeds it the loss
    (lo,) = load_los([str(tmp_path / "run")])
    assert lo.label == "μVeLO"
    cell = Runner(tmp_path / "cells").run_lo("mlp-digits8-w16-d2", lo, 30, [1])
    losses = np.asarray(cell["losses"])
    assert losses.shape[-1] == 30 and np.all(np.isfinite(losses))
