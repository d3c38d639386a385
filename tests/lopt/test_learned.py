"""Numbers checks of the learned optimizer (features, μP scaling, optax contract)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt.learned import features as F
from lopt.learned.mulo import _mlp_direction_magnitude


def constant_theta(direction=1.0, magnitude=0.0):
    """theta whose network outputs (direction, magnitude) for every element."""
    theta = jax.tree.map(jnp.zeros_like, lopt.init_theta(jax.random.key(0)))
    theta["nn"]["b2"] = jnp.array([direction, magnitude], jnp.float32)
    return theta


def normalized_gd_theta():
    """theta whose direction output is the normalized gradient feature (descent check)."""
    theta = jax.tree.map(jnp.zeros_like, lopt.init_theta(jax.random.key(0)))
    gi = int(F.FEATURE_INDEX["g"][0])
    theta["nn"]["w0"] = theta["nn"]["w0"].at[gi, 0].set(1.0).at[gi, 1].set(-1.0)
    theta["nn"]["w1"] = theta["nn"]["w1"].at[0, 0].set(1.0).at[1, 1].set(1.0)
    theta["nn"]["w2"] = theta["nn"]["w2"].at[0, 0].set(1.0).at[1, 0].set(-1.0)
    return theta


LEAVES = {
    "scalar": jnp.array(0.3, jnp.float32),
    "vector": jnp.linspace(-1, 1, 7, dtype=jnp.float32),
    "matrix": jnp.linspace(-1, 1, 12 * 5, dtype=jnp.float32).reshape(12, 5),
    "square": jnp.linspace(-1, 1, 16, dtype=jnp.float32).reshape(4, 4),
    "rank3": jnp.linspace(-1, 1, 2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4),
    "conv": jnp.linspace(-1, 1, 3 * 3 * 2 * 4, dtype=jnp.float32).reshape(3, 3, 2, 4),
    "bf16": jnp.linspace(-1, 1, 6 * 3).reshape(6, 3).astype(jnp.bfloat16),
    "empty": jnp.zeros((0, 3), jnp.float32),
}


@pytest.mark.parametrize("mup", [True, False])
def test_every_leaf_kind_finite_shape_dtype(mup):
    opt = lopt.make(lopt.init_theta(jax.random.key(1)), mup=mup)
    params = dict(LEAVES)
    grads = jax.tree.map(lambda p: (jnp.cos(jnp.arange(p.size)).reshape(p.shape)
                                    ).astype(p.dtype), params)
    state = opt.init(params)
    for acc in jax.tree.leaves(state.acc):
        assert acc.dtype == jnp.float32
    upd = jax.jit(opt.update)
    for _ in range(3):
        u, state = upd(grads, state, params)
        params = optax.apply_updates(params, u)
    for k, p in LEAVES.items():
        assert u[k].shape == p.shape and u[k].dtype == p.dtype, k
        assert params[k].shape == p.shape and params[k].dtype == p.dtype, k
        assert bool(jnp.all(jnp.isfinite(u[k].astype(jnp.float32)))), k
        if p.size:
            assert float(jnp.abs(u[k].astype(jnp.float32)).max()) > 0, k
    assert int(state.count) == 3


def test_no_recompilation_on_second_call():
    opt = lopt.make(lopt.init_theta(jax.random.key(1)))
    params = {"w": jnp.ones((8, 4)), "b": jnp.zeros(4)}
    grads = jax.tree.map(jnp.ones_like, params)
    upd = jax.jit(opt.update)
    state = opt.init(params)
    _, state = upd(grads, state, params)
    _, state = upd(grads, state, params)
    assert upd._cache_size() == 1


def _mlp_params(width, din=16, dout=10):
    k = jax.random.split(jax.random.key(0), 3)
    return {"Dense_0": {"kernel": jax.random.normal(k[0], (din, width)), "bias": jnp.zeros(width)},
            "Dense_1": {"kernel": jax.random.normal(k[1], (width, width)),
                        "bias": jnp.zeros(width)},
            "Dense_2": {"kernel": jax.random.normal(k[2], (width, dout)), "bias": jnp.zeros(dout)}}


@functools.lru_cache(maxsize=None)     # the tests below share widths; each call compiles
def _step_sizes(width, mup, mup_in="model"):
    opt = lopt.make(constant_theta(), mup=mup, mup_in=mup_in)
    params = _mlp_params(width)
    grads = jax.tree.map(jnp.ones_like, params)
    u, _ = jax.jit(lambda g, p: opt.update(g, opt.init(p), p))(grads, params)
    return {k: {n: float(jnp.abs(v).mean()) for n, v in d.items()} for k, d in u.items()}


def test_mup_hidden_step_scales_with_fan_in_and_sp_does_not():
    mu64, mu512 = _step_sizes(64, True), _step_sizes(512, True)
    sp64, sp512 = _step_sizes(64, False), _step_sizes(512, False)
    np.testing.assert_allclose(mu64["Dense_1"]["kernel"] / mu512["Dense_1"]["kernel"], 8.0,
                               rtol=1e-5)
    np.testing.assert_allclose(mu64["Dense_1"]["kernel"], 1e-2 / 64, rtol=1e-5)
    np.testing.assert_allclose(sp64["Dense_1"]["kernel"], sp512["Dense_1"]["kernel"], rtol=1e-5)
    np.testing.assert_allclose(sp64["Dense_1"]["kernel"], 1e-3, rtol=1e-5)
    for layer, name in [("Dense_0", "kernel"), ("Dense_2", "kernel"), ("Dense_0", "bias"),
                        ("Dense_1", "bias"), ("Dense_2", "bias")]:
        for a, b, sm in [(mu64, mu512, 1e-2), (sp64, sp512, 1e-3)]:
            np.testing.assert_allclose(a[layer][name], b[layer][name], rtol=1e-5)
            np.testing.assert_allclose(a[layer][name], sm, rtol=1e-5)


def test_optimizer_side_mup_scales_only_the_readout_step_by_fan_in():
    # Plain model (mup_in="optimizer", the default): the readout's step carries the 1/fan_in
    # that a μP model's forward multiplier would apply; every other leaf is unchanged.
    for width in (64, 512):
        plain, model = _step_sizes(width, True, "optimizer"), _step_sizes(width, True)
        np.testing.assert_allclose(plain["Dense_2"]["kernel"], 1e-2 / width, rtol=1e-5)
        for layer, name in [("Dense_0", "kernel"), ("Dense_1", "kernel"), ("Dense_2", "bias")]:
            np.testing.assert_allclose(plain[layer][name], model[layer][name], rtol=1e-6)
    # The SP LO has no μP anywhere.
    np.testing.assert_allclose(_step_sizes(64, False, "optimizer")["Dense_2"]["kernel"], 1e-3,
                               rtol=1e-5)


def _features_for(p, g, steps=3):
    d = lopt.decays(lopt.init_theta(jax.random.key(0)))

    def body(_, carry):
        return F.update_accumulators(carry[0], g, d["momentum"], d["rms"], d["adafactor"])

    acc = F.init_accumulators(p)
    first = F.update_accumulators(acc, g, d["momentum"], d["rms"], d["adafactor"])
    return jax.lax.fori_loop(1, steps, body, first)


@pytest.mark.parametrize("shape", [(7,), (12, 5), (3, 4, 6)])
def test_feature_normalization_unit_second_moment(shape):
    key1, key2 = jax.random.split(jax.random.key(3))
    p = jax.random.normal(key1, shape)
    # O(1) gradients, long enough that even the 0.999 momentum has E[x^2] >> 1e-5 (the
    # normalizer's eps): then every normalized feature has unit second moment.
    g = jax.random.normal(key2, shape) + 0.5
    acc, fac_g, fac_m = _features_for(p, g, steps=3000)
    x = F.dense_features(p, g, acc, fac_g, fac_m, step=5)
    assert x.shape == (int(np.prod(shape)), F.NUM_INPUTS) and F.NUM_INPUTS == 39
    ms = jnp.mean(x[:, :F.NUM_TENSOR_FEATURES] ** 2, axis=0)
    np.testing.assert_allclose(ms, 1.0, atol=1e-3)


def test_time_features_match_formula():
    for t in [0, 1, 7, 250, 123456]:
        want = np.tanh(t / np.array(F.TIMESCALES) - 1.0)
        np.testing.assert_allclose(lopt.time_features(t), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("chunk", [None, 2])
@pytest.mark.parametrize("shape", [(7,), (30,), (12, 5), (5, 12), (3, 4, 6), (6, 4, 3), (40, 3)])
def test_fast_first_layer_equals_dense_features(shape, chunk, monkeypatch):
    # chunk=2: every tensor here takes the sliced path of large tensors (slices of
    # ~2 elements along axis 0, the row/column contributions sliced or shared by axis)
    if chunk is not None:
        monkeypatch.setattr(lopt.learned.mulo, "CHUNK_ELEMENTS", chunk)
    key1, key2, key3 = jax.random.split(jax.random.key(4), 3)
    p = jax.random.normal(key1, shape)
    g = jax.random.normal(key2, shape)
    theta = lopt.init_theta(key3)
    acc, fac_g, fac_m = _features_for(p, g)
    x = F.dense_features(p, g, acc, fac_g, fac_m, step=11)
    h = x
    nn = theta["nn"]
    for i in range(3):
        h = h @ nn[f"w{i}"] + nn[f"b{i}"]
        h = jax.nn.relu(h) if i < 2 else h
    elem, row, col, scale = F.feature_parts(p, g, acc, fac_g, fac_m)
    d, a = _mlp_direction_magnitude(nn, elem, row, col, scale, F.time_features(11), shape)
    np.testing.assert_allclose(d.ravel(), h[:, 0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.ravel(), h[:, 1], rtol=1e-4, atol=1e-5)


def test_accumulators_follow_their_definitions():
    g = jnp.arange(1.0, 7.0).reshape(2, 3)
    acc, fac_g, _ = _features_for(jnp.zeros((2, 3)), g, steps=1)
    np.testing.assert_allclose(acc.m[..., 0], 0.1 * g, rtol=1e-6)
    np.testing.assert_allclose(acc.v[..., 0], 1e-3 * g ** 2, rtol=1e-4)  # f32 decay
    # factored over (d1, d0) = (0, 1): rows average over axis 1, columns over axis 0
    np.testing.assert_allclose(acc.row[:, 0], 0.1 * jnp.mean(g ** 2, axis=1), rtol=1e-5)
    np.testing.assert_allclose(acc.col[:, 0], 0.1 * jnp.mean(g ** 2, axis=0), rtol=1e-5)
    assert fac_g.shape == (2, 3, 3)


def test_descent_on_quadratic_with_normalized_gd_theta():
    opt = lopt.make(normalized_gd_theta(), mup=False, step_mult=0.05)
    h = jnp.linspace(0.5, 2.0, 20).reshape(4, 5)
    loss = lambda p: 0.5 * jnp.sum(h * p["w"] ** 2)
    params = {"w": jnp.ones((4, 5))}
    state = opt.init(params)
    l0 = float(loss(params))
    for _ in range(20):
        u, state = opt.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, u)
    assert float(loss(params)) < 0.5 * l0


def test_learned_optimization_layout_round_trip_is_exact():
    theta = lopt.init_theta(jax.random.key(5))
    theta["momentum_decays"] = jnp.array([0.1, -0.2, 0.3])
    lo = lopt.to_learned_optimization(theta)
    assert set(lo) == {"momentum_decays", "rms_decays", "adafactor_decays", "nn"}
    assert set(lo["nn"]["~"]) == {"w0", "b0", "w1", "b1", "w2", "b2"}
    assert lo["nn"]["~"]["w0"].shape == (39, 32)
    back = lopt.from_learned_optimization(lo)
    for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), b)
    flat = {k: v for k, v in lo.items() if k != "nn"} | {"nn/~": lo["nn"]["~"]}
    back2 = lopt.from_learned_optimization(flat)
    np.testing.assert_array_equal(back2["nn"]["w1"], np.asarray(theta["nn"]["w1"]))
    with pytest.raises(ValueError, match="missing"):
        lopt.from_learned_optimization({"nn": {}})


def test_decay_reparametrization():
    theta = lopt.init_theta(jax.random.key(0))
    d = lopt.decays(theta)
    np.testing.assert_allclose(d["momentum"], [0.9, 0.99, 0.999], rtol=1e-6)
    theta["momentum_decays"] = jnp.array([0.1, 0.0, 0.0])
    np.testing.assert_allclose(lopt.decays(theta)["momentum"][0], 1 - 0.1 * np.exp(1.0),
                               rtol=1e-5)


def test_update_without_params_is_a_clear_error():
    opt = lopt.make(lopt.init_theta(jax.random.key(0)))
    params = {"w": jnp.ones((3, 3))}
    with pytest.raises(ValueError, match="needs the parameters"):
        opt.update(params, opt.init(params))


def test_horizon_rule_shrinks_the_step_only_beyond_its_reference_horizon():
    # step x (T_ref / max(T, T_ref))^a: unchanged up to T_ref, 10x longer -> 10^-0.3 = 0.501x
    theta = normalized_gd_theta()
    params = {"w": jnp.linspace(-1, 1, 12, dtype=jnp.float32).reshape(3, 4)}
    grads = {"w": jnp.linspace(0.5, -0.7, 12, dtype=jnp.float32).reshape(3, 4)}
    plain = lopt.LOConfig(mup=False)
    rule = lopt.LOConfig(mup=False, horizon_ref=500, horizon_power=0.3)

    def step(config, num_steps):
        opt = lopt.make(theta, config=config, num_steps=num_steps)
        u, _ = opt.update(grads, opt.init(params), params)
        return np.asarray(u["w"])

    base = step(plain, None)
    assert np.abs(base).max() > 0
    for t in (1, 200, 500):
        np.testing.assert_allclose(step(rule, t), base, rtol=1e-6)
    np.testing.assert_allclose(step(rule, 5000), base * 10 ** -0.3, rtol=1e-5)
    np.testing.assert_allclose(step(rule, 12500), base * 25 ** -0.3, rtol=1e-5)
    with pytest.raises(lopt.NumStepsError, match="horizon_ref=500"):
        step(rule, None)
    with pytest.raises(ValueError, match="horizon_power"):
        lopt.LOConfig(horizon_ref=500, horizon_power=-1.0)


def test_roles_are_resolved_once_per_parameter_structure(monkeypatch):
    from lopt.mup import roles as R
    calls = []
    real = R.resolve_roles
    monkeypatch.setattr(R, "resolve_roles", lambda *a, **k: calls.append(1) or real(*a, **k))
    opt = lopt.make(lopt.init_theta(jax.random.key(0)))
    params = {"Dense_0": {"kernel": jnp.ones((4, 8))}, "Dense_1": {"kernel": jnp.ones((8, 3))}}
    state = opt.init(params)
    for _ in range(3):
        u, state = opt.update(params, state, params)
        params = optax.apply_updates(params, u)
    jax.jit(opt.update)(params, state, params)
    assert len(calls) == 1
    wider = {"Dense_0": {"kernel": jnp.ones((4, 16))}, "Dense_1": {"kernel": jnp.ones((16, 3))}}
    opt.update(wider, opt.init(wider), wider)
    assert len(calls) == 2
