"""The compact learned optimizer (``LOConfig(features="compact")``, ``lopt.learned.compact``)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt.learned import compact as C
from meta_train.inner import train
from meta_train.tasks import get_task


def _mlp(width, depth=3, inputs=16, classes=10, key=0):
    dims = [inputs] + [width] * (depth - 1) + [classes]
    ks = jax.random.split(jax.random.key(key), len(dims))
    return {f"Dense_{i}": {"kernel": jax.random.normal(ks[i], (a, b)) / np.sqrt(a),
                           "bias": jnp.zeros((b,))}
            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))}


def _roles(params):
    last = len(params) - 1
    return {k: {"kernel": "input" if i == 0 else "output" if i == last else "hidden",
                "bias": "vector"} for i, k in enumerate(params)}


def _rms(x):
    return float(jnp.sqrt(jnp.mean(jnp.square(x))))


def _reference_outputs(nn, g, p, acc, time_in):
    # the same network written as plain matrix products on the materialized features
    r = 1.0 / np.sqrt(np.asarray(acc.v, np.float64) + 1e-12)
    m1, m2 = np.asarray(acc.m[..., 0], np.float64), np.asarray(acc.m[..., 1], np.float64)
    g, p = np.asarray(g, np.float64), np.asarray(p, np.float64)
    x = np.stack([g, p, m1, m2, g * r, m1 * r, m2 * r, r], -1).reshape(-1, 8)
    x = x / np.sqrt((x ** 2).mean(0) + 1e-30)
    x = np.concatenate([x, np.broadcast_to(np.asarray(time_in), (x.shape[0], len(time_in)))], 1)
    h = np.maximum(x @ np.asarray(nn["w0"]) + np.asarray(nn["b0"]), 0)
    h = np.maximum(h @ np.asarray(nn["w1"]) + np.asarray(nn["b1"]), 0)
    return h @ np.asarray(nn["w2"]) + np.asarray(nn["b2"])


def test_the_fused_network_computes_the_plain_matrix_products_of_the_features():
    cfg = dataclasses.replace(lopt.COMPACT, magnitude=True)
    theta = lopt.init_theta(jax.random.key(3), cfg)
    k = jax.random.split(jax.random.key(4), 4)
    g = jax.random.normal(k[0], (12, 7))
    p = jax.random.normal(k[1], (12, 7))
    acc = C.CompactAccumulators(jax.random.normal(k[2], (12, 7, 2)),
                                jnp.abs(jax.random.normal(k[3], (12, 7))) + 1e-3)
    time_in = lopt.time_features(37)
    got = np.stack([np.asarray(o).reshape(-1) for o in
                    C.raw_outputs(theta["nn"], g, p, acc, time_in)], -1)
    want = _reference_outputs(theta["nn"], g, p, acc, time_in)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_adam_weights_step_along_the_per_tensor_normalized_adam_direction():
    params = _mlp(64)
    roles = _roles(params)
    cfg = dataclasses.replace(lopt.COMPACT, mup_base=64.0, depth_ref=0)   # every mult 1
    opt = lopt.make(lopt.adam_theta(cfg), config=cfg, roles=roles, mup_in="model")
    state = opt.init(params)
    adam = optax.scale_by_adam(b1=0.9, b2=0.999, eps=0.0, eps_root=1e-12)
    astate = adam.init(params)
    for t in range(3):
        g = jax.tree.map(lambda p, t=t: jnp.cos(p * (t + 1)), params)
        u, state = opt.update(g, state, params)
        a, astate = adam.update(g, astate)
    # Adam's direction without bias correction is m / sqrt(v) up to one factor per tensor,
    # which the output normalization removes: the update is -step_mult * normalized direction
    for path in (("Dense_0", "kernel"), ("Dense_1", "kernel"), ("Dense_2", "bias")):
        got, want = u[path[0]][path[1]], a[path[0]][path[1]]
        want = -cfg.step_mult * want / _rms(want)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-3, atol=1e-7)


def test_the_magnitude_ablation_starts_from_the_same_optimizer_as_the_shipped_recipe():
    # docs/compact-lo.md's magnitude-head ablation compares two meta-trainings from
    # lopt.adam_theta: with a magnitude head its output is 0 there and exp(0) = 1, so both runs
    # start from one optimizer and share the `dev` suite's "start" rows
    params = _mlp(48)
    cfg = dataclasses.replace(lopt.COMPACT, magnitude=True, schedule="cosine",
                              time_features="fraction", tau_clamp=500)
    updates = {}
    for magnitude in (True, False):
        c = dataclasses.replace(cfg, magnitude=magnitude)
        opt = lopt.make(lopt.adam_theta(c), config=c, roles=_roles(params), mup_in="model",
                        num_steps=10)
        state, p, got = opt.init(params), params, []
        for t in range(4):
            g = jax.tree.map(lambda x, t=t: jnp.sin(x * (t + 2)), p)
            u, state = opt.update(g, state, p)
            p = optax.apply_updates(p, u)
            got.append(u)
        updates[magnitude] = got
    assert _rms(updates[True][0]["Dense_1"]["kernel"]) > 0
    for a, b in zip(updates[True], updates[False]):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_the_horizon_rule_leaves_runs_up_to_its_reference_unchanged_bitwise():
    # docs/compact-lo.md's horizon variant (mulo-compact-cpu with horizon_ref=2000, power 1)
    # is the shipped optimizer on every run of <= 2000 steps, so it shares those cells' rows;
    # a 4000-step run steps half as far
    theta, config, _ = lopt.load_theta("mulo-compact-cpu")
    rule = dataclasses.replace(config, horizon_ref=2000, horizon_power=1.0)
    params = _mlp(48)
    grads = jax.tree.map(lambda x: jnp.sin(3 * x), params)

    def update(cfg, num_steps):
        opt = lopt.make(theta, config=cfg, roles=_roles(params), mup_in="model",
                        num_steps=num_steps)
        u, _ = opt.update(grads, opt.init(params), params)
        return jax.tree.leaves(u)

    for t in (500, 2000):
        for a, b in zip(update(rule, t), update(config, t)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(update(rule, 4000), update(config, 4000)):
        assert _rms(b) > 0
        np.testing.assert_allclose(np.asarray(a), 0.5 * np.asarray(b), rtol=1e-5, atol=1e-12)


@pytest.mark.slow   # 10-30 s: make test runs it, the fast tier does not
def test_a_normalized_step_follows_mup_across_widths():
    # hidden steps shrink as base/fan_in, input and vector steps keep their size: the
    # update's size per element does not depend on the gradient's scale or the width
    cfg = dataclasses.replace(lopt.COMPACT, depth_ref=0)
    theta = lopt.init_theta(jax.random.key(0), cfg)
    sizes = {}
    for width in (128, 512):
        params = _mlp(width)
        opt = lopt.make(theta, config=cfg, roles=_roles(params), mup_in="model")
        g = jax.tree.map(lambda p: 1e-3 * jax.random.normal(jax.random.key(1), p.shape), params)
        u, _ = opt.update(g, opt.init(params), params)
        sizes[width] = {k: _rms(v["kernel"]) for k, v in u.items()}
    step = cfg.step_mult
    assert sizes[128]["Dense_0"] == pytest.approx(step, rel=1e-4)
    assert sizes[512]["Dense_0"] == pytest.approx(step, rel=1e-4)
    assert sizes[128]["Dense_1"] == pytest.approx(step * 512 / 128, rel=1e-4)
    assert sizes[512]["Dense_1"] == pytest.approx(step * 512 / 512, rel=1e-4)


def test_an_orthogonalized_hidden_step_has_a_flat_spectrum_whose_norm_does_not_grow_with_width():
    cfg = dataclasses.replace(lopt.COMPACT, orthogonalize=True, depth_ref=0)
    theta = lopt.init_theta(jax.random.key(0), cfg)
    norms = {}
    for width in (64, 256):
        params = _mlp(width)
        opt = lopt.make(theta, config=cfg, roles=_roles(params), mup_in="model")
        g = jax.tree.map(lambda p: jax.random.normal(jax.random.key(2), p.shape), params)
        u, _ = opt.update(g, opt.init(params), params)
        s = np.linalg.svd(np.asarray(u["Dense_1"]["kernel"]), compute_uv=False)
        # Newton-Schulz's ~U V^T: a flat spectrum. 5 quintic steps lift all but the few
        # smallest singular values of a square Gaussian matrix (whose own spectrum spans
        # decades) to 0.5-1.2 of the largest
        assert np.percentile(s, 5) > 0.4 * s.max()
        norms[width] = s.max()
        # input and readout matrices are not orthogonalized: normalized steps as before
        assert _rms(u["Dense_0"]["kernel"]) == pytest.approx(cfg.step_mult, rel=1e-4)
    assert norms[256] == pytest.approx(norms[64], rel=0.25)  # μP's spectral condition


def test_compact_options_are_refused_where_they_are_not_defined():
    with pytest.raises(ValueError, match="features='compact'"):
        lopt.LOConfig(output_norm=True)
    with pytest.raises(ValueError, match="μLO only"):
        dataclasses.replace(lopt.COMPACT, mup=False, orthogonalize=True)
    with pytest.raises(ValueError, match="features"):
        lopt.LOConfig(features="tiny")
    with pytest.raises(ValueError, match="cannot start"):
        lopt.extend_theta(lopt.init_theta(jax.random.key(0)), lopt.MULO, lopt.COMPACT)
    with pytest.raises(ValueError, match="does not match"):
        lopt.make(lopt.init_theta(jax.random.key(0)), config=lopt.COMPACT)


def test_a_compact_checkpoint_round_trips_and_old_configs_stay_classic(tmp_path):
    theta = lopt.init_theta(jax.random.key(5), lopt.COMPACT)
    lopt.save(tmp_path / "c", theta, lopt.COMPACT, {})
    theta2, cfg2, _ = lopt.load_theta(tmp_path / "c")
    assert cfg2 == lopt.COMPACT
    for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(theta2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    old = {k: v for k, v in lopt.MULO.to_dict().items()
           if k not in ("features", "magnitude", "output_norm", "orthogonalize")}
    assert lopt.config_from_dict(old) == dataclasses.replace(lopt.MULO, step_mult=1e-2)


def test_the_hand_set_compact_optimizer_trains_an_mlp_as_well_as_tuned_adam_does():
    # no meta-training: the Adam weights with output normalization are μAdam normalized per
    # tensor; on a held-out-free small task it must train about as well as Adam at its
    # usual LR (within 10% of its final loss) and far below the initial loss
    task = get_task("mlp-digits8-w64-d2")
    cfg = lopt.COMPACT
    opt = lopt.make(lopt.adam_theta(cfg), config=cfg, roles=task.roles, mup_in="model")
    lo = train(task, opt, key=jax.random.key(1), num_steps=150)
    adam = train(task, optax.adam(3e-3), key=jax.random.key(1), num_steps=150)
    lo_final = float(jnp.mean(lo.losses[-10:]))
    adam_final = float(jnp.mean(adam.losses[-10:]))
    assert not bool(lo.diverged)
    assert lo_final < 0.3 * float(lo.losses[0])
    assert lo_final < 1.1 * adam_final, (lo_final, adam_final)


def test_the_compact_step_is_finite_with_a_nan_parameter_and_leaves_other_elements_alone():
    params = _mlp(32)
    cfg = lopt.COMPACT
    opt = lopt.make(lopt.init_theta(jax.random.key(0), cfg), config=cfg, roles=_roles(params),
                    mup_in="model")
    g = jax.tree.map(lambda p: jnp.sin(p), params)
    u, _ = opt.update(g, opt.init(params), params)
    bad = jax.tree.map(lambda x: x, params)
    bad["Dense_1"]["kernel"] = bad["Dense_1"]["kernel"].at[3, 4].set(jnp.nan)
    u_bad, _ = opt.update(g, opt.init(bad), bad)
    k_good, k_bad = np.asarray(u["Dense_1"]["kernel"]), np.asarray(u_bad["Dense_1"]["kernel"])
    assert np.isfinite(k_bad).all()
    mask = np.ones_like(k_good, bool)
    mask[3, 4] = False
    # the NaN element's parameter feature counts as 0: the other elements barely move
    np.testing.assert_allclose(k_bad[mask], k_good[mask], rtol=0.05, atol=1e-6)
