"""μVeLO / SP VeLO (lopt.learned.velo): LSTM state, features, μP step scaling, the optax
contract."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt.learned import features as F
from lopt.learned import velo as V


def _constant_theta(config=lopt.MUVELO, direction=1.0, lr_mult=1.0):
    """theta whose per-parameter MLP outputs (direction, 0) everywhere, mixed with weight 1
    per bank member, and whose LR head outputs ``lr_mult``."""
    theta = jax.tree.map(jnp.zeros_like, lopt.init_velo_theta(jax.random.key(0), config))
    n = config.ff_layers
    theta["bank"][f"b{n}"] = theta["bank"][f"b{n}"].at[:, 0].set(direction)
    theta["tensor_net"]["controls"]["b"] = jnp.ones((config.param_inits,))
    theta["tensor_net"]["lr_mult"]["b"] = jnp.full((1,), lr_mult)
    return theta


def _gd_theta(config=lopt.MUVELO):
    """theta whose direction is the normalized gradient channel (a descent check)."""
    theta = _constant_theta(config, direction=0.0)
    n = config.ff_layers
    bank = theta["bank"]
    bank["w0"] = bank["w0"].at[:, 0, 0].set(1.0).at[:, 0, 1].set(-1.0)   # channel 0 is g
    for i in range(1, n):
        bank[f"w{i}"] = bank[f"w{i}"].at[:, 0, 0].set(1.0).at[:, 1, 1].set(1.0)
    bank[f"w{n}"] = bank[f"w{n}"].at[:, 0, 0].set(1.0).at[:, 1, 0].set(-1.0)
    return theta


LEAVES = {
    "scalar": jnp.array(0.3, jnp.float32),
    "vector": jnp.linspace(-1, 1, 7, dtype=jnp.float32),
    "matrix": jnp.linspace(-1, 1, 12 * 5, dtype=jnp.float32).reshape(12, 5),
    "rank3": jnp.linspace(-1, 1, 2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4),
    "conv": jnp.linspace(-1, 1, 3 * 3 * 2 * 4, dtype=jnp.float32).reshape(3, 3, 2, 4),
    "bf16": jnp.linspace(-1, 1, 6 * 3).reshape(6, 3).astype(jnp.bfloat16),
    "empty": jnp.zeros((0, 3), jnp.float32),
}
ROLES = {"scalar": "vector", "vector": "vector", "matrix": "input", "rank3": "hidden",
         "conv": "hidden", "bf16": "output", "empty": "hidden"}


@pytest.mark.parametrize("config", [lopt.MUVELO,
                                    pytest.param(lopt.SP_VELO, marks=pytest.mark.slow)])
def test_every_leaf_kind_finite_shape_dtype(config):
    opt = lopt.make_velo(lopt.init_velo_theta(jax.random.key(1), config), config, roles=ROLES,
                         num_steps=10)
    grads = jax.tree.map(lambda p: jnp.cos(3 * p.astype(jnp.float32)).astype(p.dtype), LEAVES)
    state = opt.init(LEAVES)
    update = jax.jit(lambda g, s, p, v: opt.update(g, s, p, value=v))
    for t in range(3):
        u, state = update(grads, state, LEAVES, 2.0 - 0.1 * t)
        for k, p in LEAVES.items():
            assert u[k].shape == p.shape and u[k].dtype == p.dtype, k
            assert bool(jnp.isfinite(u[k].astype(jnp.float32)).all()), k
    assert u["empty"].size == 0 and state.lstm_h.shape == (6, config.lstm_hidden)


def test_lstm_state_carries_across_steps():
    theta = lopt.init_velo_theta(jax.random.key(2))
    opt = lopt.make_velo(theta, roles={"w": "hidden", "b": "vector"}, num_steps=50)
    params = {"w": jax.random.normal(jax.random.key(3), (8, 8)), "b": jnp.zeros(8)}
    grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.5, params)
    s0 = opt.init(params)
    np.testing.assert_array_equal(s0.lstm_h, 0.0)
    update = jax.jit(lambda s: opt.update(grads, s, params, value=1.0))
    u1, s1 = update(s0)
    u2, s2 = update(s1)
    assert float(jnp.abs(s1.lstm_h).max()) > 0 and float(jnp.abs(s2.lstm_c - s1.lstm_c).max()) > 0
    # the same inputs from a fresh LSTM state give another update: the state is used
    s_fresh = s1._replace(lstm_h=jnp.zeros_like(s1.lstm_h), lstm_c=jnp.zeros_like(s1.lstm_c))
    u_fresh, _ = update(s_fresh)
    assert float(jnp.abs(u_fresh["w"] - u2["w"]).max()) > 0


def test_fraction_and_loss_features_match_their_formulas():
    t, total = jnp.int32(37), 200
    want = np.tanh(10 * (37 / 200 - np.array([0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1])))
    np.testing.assert_allclose(F.fraction_features(t, total), want, rtol=1e-6)
    # loss features: EMAs at 10 half-lives from 10 to T; zero for the first two steps, then
    # (EMA_i - min_i) / (EMA_{i+1} - min_i) - 1, clipped to [-1, 1]
    buf = V.LossBuffer(jnp.zeros(10), jnp.full(10, 1e12), jnp.int32(0))
    losses = [2.3, 2.0, 1.7, 1.5, 1.6, 1.2]
    decays = np.exp(-1 / 10 ** np.linspace(1, np.log10(1000.0), 10))
    means, mins = np.zeros(10), np.full(10, 1e12)
    for i, loss in enumerate(losses):
        buf, feats = V.update_loss_buffer(buf, loss, 1000)
        means = decays * means + (1 - decays) * loss
        cor = means / (1 - decays ** (i + 1))
        mins = np.minimum(mins, cor)
        ref = np.clip((cor[:-1] - mins[:-1]) / np.maximum(1e-8, cor[1:] - mins[:-1]) - 1, -1, 1)
        np.testing.assert_allclose(feats, 0 * ref if i < 2 else ref, atol=1e-5)
    # a spike is clipped at twice the largest corrected EMA
    _, spiked = V.update_loss_buffer(buf, 1e9, 1000)
    assert np.isfinite(np.asarray(spiked)).all()


def test_mup_hidden_step_ratio_between_widths_64_and_1024_is_16():
    steps = {}
    for width in (64, 1024):
        params = {"in": jnp.ones((8, width)), "hid": jnp.ones((width, width)),
                  "out": jnp.ones((width, 10))}
        roles = {"in": "input", "hid": "hidden", "out": "output"}
        opt = lopt.make_velo(_constant_theta(), roles=roles, mup_in="model", num_steps=10)
        u, _ = jax.jit(lambda p: opt.update(p, opt.init(p), p, value=1.0))(params)
        steps[width] = float(jnp.abs(u["hid"]).mean())
        np.testing.assert_allclose(u["in"], -1e-3, rtol=1e-5)      # d=1, a=0: step_mult
    assert steps[64] / steps[1024] == pytest.approx(16.0, rel=1e-5)
    # the SP VeLO of identical architecture steps alike at every width
    params = {"hid": jnp.ones((64, 64))}
    opt = lopt.make_velo(_constant_theta(lopt.SP_VELO), lopt.SP_VELO, roles={"hid": "hidden"},
                         num_steps=10)
    u, _ = opt.update(params, opt.init(params), params, value=1.0)
    np.testing.assert_allclose(u["hid"], -1e-3, rtol=1e-5)


def test_no_recompilation_on_second_update():
    opt = lopt.make_velo(lopt.init_velo_theta(jax.random.key(0)), roles={"w": "hidden"},
                         num_steps=20)
    traces = []

    @jax.jit
    def step(params, state, loss):
        traces.append(1)
        g = jax.tree.map(lambda p: 0.1 * p, params)
        u, state = opt.update(g, state, params, value=loss)
        return optax.apply_updates(params, u), state

    params = {"w": jnp.ones((4, 4))}
    state = opt.init(params)
    for loss in (1.0, 0.9, 0.8):
        params, state = step(params, state, jnp.float32(loss))
    assert len(traces) == 1


def test_normalized_gradient_direction_descends_a_quadratic():
    # The features reach the MLP with the right sign and scale: with the direction set to
    # the normalized gradient channel, the step descends.
    target = jax.random.normal(jax.random.key(4), (16, 16))
    loss_fn = lambda p: 0.5 * jnp.sum((p["w"] - target) ** 2)
    opt = lopt.make_velo(_gd_theta(), roles={"w": "vector"}, num_steps=300)
    opt = optax.chain(opt, optax.scale(100.0))      # the untrained step_mult 1e-3 is tiny
    params = {"w": jnp.zeros((16, 16))}
    state = opt.init(params)
    first = float(loss_fn(params))

    def step(carry, _):
        params, state = carry
        loss, g = jax.value_and_grad(loss_fn)(params)
        u, state = opt.update(g, state, params, value=loss)
        return (optax.apply_updates(params, u), state), None
    (params, state), _ = jax.lax.scan(step, (params, state), None, length=300)
    assert float(loss_fn(params)) < 0.05 * first


def test_missing_loss_step_count_or_wrong_theta_are_clear_errors():
    theta = lopt.init_velo_theta(jax.random.key(0))
    params = {"w": jnp.ones((3, 3))}
    opt = lopt.make_velo(theta, roles={"w": "hidden"})
    with pytest.raises(lopt.NumStepsError, match="total step count"):
        opt.update(params, opt.init(params), params, value=1.0)
    opt = lopt.make_velo(theta, roles={"w": "hidden"}, num_steps=5)
    with pytest.raises(ValueError, match="value=loss"):
        opt.update(params, opt.init(params), params)
    with pytest.raises(ValueError, match="does not match the VeLO architecture"):
        lopt.make_velo(theta, lopt.VeLOConfig(lstm_hidden=8))
    with pytest.raises(ValueError, match="lstm_hidden=0"):
        lopt.VeLOConfig(lstm_hidden=0)


def test_describe_roles_shows_a_velo_optimizers_multipliers():
    """μVeLO has no depth rule (VeLOConfig has no depth_ref): its table is the classic
    absolute 1/fan_in for hidden weights."""
    import lopt
    params = {"Dense_0": {"kernel": jnp.ones((8, 32)), "bias": jnp.ones(32)},
              "Dense_1": {"kernel": jnp.ones((32, 32)), "bias": jnp.ones(32)},
              "Dense_2": {"kernel": jnp.ones((32, 4)), "bias": jnp.ones(4)}}
    table = lopt.describe_roles(params, lo="muvelo-cpu")
    row = [ln.split() for ln in table.splitlines() if ln.startswith("Dense_1/kernel")][0]
    assert row[3:6] == ["hidden", "32", "0.0312"]           # path, (32, 32), role, fan_in, lr
    assert "depth" not in table
    sp = lopt.describe_roles(params, lo="sp-velo-cpu")
    assert [ln.split() for ln in sp.splitlines() if ln.startswith("Dense_1/kernel")][0][5] == "1"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_nan_or_inf_loss_counts_as_the_last_finite_one(bad):
    # μVeLO contains a bad loss as μLO contains a bad gradient element: the updates after a
    # NaN/inf loss equal those of the same run with that loss replaced by the last finite
    # one, and the state stays finite (a NaN loss once made the LSTM state NaN for good)
    theta = V.init_velo_theta(jax.random.key(0))
    opt = lopt.make_velo(theta, num_steps=20)
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.ones((4,))}
    grads = [jax.tree.map(lambda p, i=i: jnp.cos(p * (i + 1)), params) for i in range(6)]
    good = [2.3, 2.1, 1.9, 1.9, 1.7, 1.6]   # step 3 repeats step 2's loss
    seen = [2.3, 2.1, 1.9, bad, 1.7, 1.6]
    update = jax.jit(opt.update)

    def run(losses):
        state, out = opt.init(params), []
        for g, loss in zip(grads, losses):
            u, state = update(g, state, params, value=jnp.float32(loss))
            out.append(u)
        return out, state

    want, _ = run(good)
    got, state = run(seen)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_array_equal(a, b)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))
    # a bad first loss (no finite one yet) leaves the loss buffer as it was: features 0
    u, state = update(grads[0], opt.init(params), params, value=jnp.float32(bad))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((u, state)))
    assert int(state.loss.count) == 0
    u, _ = update(grads[1], state, params, value=jnp.float32(2.0))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))


def test_param_scale_mult_scales_each_tensors_step_by_its_rms():
    """VeLO's parameter-scale multiplier (off in μVeLO): on, every tensor's update is the
    same update times the RMS of that tensor's parameters."""
    import dataclasses
    on_cfg = dataclasses.replace(lopt.SP_VELO, param_scale_mult=True)
    params = {"a": jnp.linspace(-1, 1, 12, dtype=jnp.float32).reshape(4, 3),
              "b": 3.0 * jnp.linspace(-1, 1, 8, dtype=jnp.float32).reshape(2, 4)}
    grads = jax.tree.map(lambda p: jnp.cos(3 * p), params)
    roles = {"a": "input", "b": "output"}
    ups = []
    for cfg in (lopt.SP_VELO, on_cfg):
        opt = lopt.make_velo(_gd_theta(cfg), cfg, roles=roles, num_steps=10)
        ups.append(opt.update(grads, opt.init(params), params, value=1.0)[0])
    for k, p in params.items():
        rms = float(jnp.sqrt(jnp.mean(jnp.square(p)) + 1e-9))
        assert float(jnp.max(jnp.abs(ups[0][k]))) > 0
        np.testing.assert_allclose(ups[1][k], ups[0][k] * rms, rtol=1e-5, atol=1e-8)
    assert not np.allclose(ups[1]["a"], ups[0]["a"])
