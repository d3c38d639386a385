"""One bad gradient element (NaN, inf, 1e20) must not poison the learned optimizer's update of
the rest of its tensor, now or on later clean steps (lopt.learned neutralizes it per element
before the accumulators and the per-tensor feature normalization:
lopt.learned.features.neutralize)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt

BAD = (3, 5)
STEPS = 4


def _updates(bad=None):
    """LO updates of a 16x16 weight over STEPS steps of the same clean gradient, except that
    element BAD of the first step's gradient is set to ``bad`` (None: clean throughout)."""
    theta = lopt.init_theta(jax.random.PRNGKey(0))
    opt = lopt.make(theta, roles={"w": "hidden", "b": "vector"})
    params = {"w": jax.random.normal(jax.random.PRNGKey(1), (16, 16)), "b": jnp.zeros(16)}
    grad = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
    state, out = opt.init(params), []
    for t in range(STEPS):
        g = grad if (t or bad is None) else {**grad, "w": grad["w"].at[BAD].set(bad)}
        u, state = opt.update(g, state, params)
        out.append(np.asarray(u["w"]))
    return out


@pytest.fixture(scope="module")
def clean():
    return _updates(), _updates(0.0)


def _others(u):
    mask = np.ones(u.shape, bool)
    mask[BAD] = False
    return u[mask]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e20, -3e8])
def test_a_faulty_element_counts_as_zero(clean, bad):
    """Non-finite elements, and finite ones beyond lopt.learned.features.MAX_GRAD (1e20 would
    overflow the squared features; even a clipped 1e8 would dominate the tensor's
    normalizers), leave the other elements' updates as in a clean run, now and later."""
    ref, zeroed = clean
    for t, u in enumerate(_updates(bad)):
        assert np.isfinite(u).all(), t
        # exactly the update of a gradient whose bad element is 0, at that step and later
        np.testing.assert_array_equal(u, zeroed[t])
        # and close to the clean update for the other elements (one of 256 inputs changed)
        np.testing.assert_allclose(_others(u), _others(ref[t]), rtol=0,
                                   atol=0.1 * np.abs(ref[t]).max())


def test_large_gradients_below_the_limit_are_used_as_they_are(clean):
    """1e7 is big but legal: the update differs from the zeroed-element one at that element."""
    _, zeroed = clean
    u = _updates(1e7)
    assert np.isfinite(u[0]).all()
    assert u[0][BAD] != zeroed[0][BAD]


def test_checkpoint_config_values_are_type_checked(tmp_path):
    import json
    lopt.save(tmp_path / "lo", lopt.init_theta(jax.random.PRNGKey(0)), lopt.MULO)
    doc = json.loads((tmp_path / "lo" / "lopt.json").read_text())
    for key, bad in (("mup", "false"), ("hidden_size", 32.0), ("step_mult", "1e-2"),
                     ("mup", 1)):
        # a hand-edited document without its digest (as written before digests) loads
        # unverified, so its values reach the type checks
        broken = {k: v for k, v in doc.items() if k != "sha256"}
        broken["config"] = {**doc["config"], key: bad}
        (tmp_path / "lo" / "lopt.json").write_text(json.dumps(broken))
        with pytest.raises(lopt.CheckpointError, match=f"{key}={bad!r}: must be"):
            lopt.load(tmp_path / "lo")


def test_a_theta_of_the_wrong_shape_is_refused_when_the_optimizer_is_built():
    theta = lopt.init_theta(jax.random.PRNGKey(0), lopt.LOConfig(hidden_size=16))
    with pytest.raises(ValueError, match="does not match the learned-optimizer architecture"):
        lopt.make(theta)                                   # default hidden_size 32
    lo_theta = lopt.to_learned_optimization(theta)
    lo_theta["nn"]["~"]["w1"] = lo_theta["nn"]["~"]["w1"][:, :3]
    with pytest.raises(ValueError, match="does not match"):
        lopt.from_learned_optimization(lo_theta)
    assert lopt.make(theta, config=lopt.LOConfig(hidden_size=16)) is not None


def _mlp_params():
    k = iter(jax.random.split(jax.random.PRNGKey(3), 3))
    return {f"Dense_{i}": {"kernel": jax.random.normal(next(k), s), "bias": jnp.zeros(s[1])}
            for i, s in enumerate([(8, 16), (16, 16), (16, 4)])}


@pytest.mark.slow   # 10-30 s: make test runs it, the fast tier does not
def test_a_nan_parameter_changes_only_its_own_update_which_stays_finite():
    """One NaN or inf weight: the per-tensor normalizers ignore it as they ignore a bad
    gradient element, so the rest of its tensor steps as if the weight were 0 (before: all
    256 elements' updates became NaN); the bad weight itself stays non-finite after the step."""
    params = _mlp_params()
    grads = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=jnp.float32)).reshape(
        p.shape), params)
    for name in ("mulo-cpu", "muvelo-cpu"):
        opt = lopt.load(name, num_steps=10)
        kw = {"value": jnp.float32(1.0)} if "velo" in name else {}
        ref = opt.update(grads, opt.init(params), params, **kw)[0]
        for bad in (np.nan, np.inf):
            p = {**params, "Dense_1": {**params["Dense_1"],
                                       "kernel": params["Dense_1"]["kernel"].at[2, 3].set(bad)}}
            zero = {**params, "Dense_1": {**params["Dense_1"],
                                          "kernel": params["Dense_1"]["kernel"].at[2, 3].set(0.)}}
            u = opt.update(grads, opt.init(p), p, **kw)[0]
            assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(u)), name
            want = opt.update(grads, opt.init(zero), zero, **kw)[0]
            np.testing.assert_array_equal(u["Dense_1"]["kernel"], want["Dense_1"]["kernel"])
            if "velo" not in name:    # the μLO's other tensors do not see it at all
                np.testing.assert_array_equal(u["Dense_0"]["kernel"], ref["Dense_0"]["kernel"])
            assert not np.isfinite(float((p["Dense_1"]["kernel"] + u["Dense_1"]["kernel"])[2, 3]))


def test_a_gradient_of_the_wrong_shape_is_one_error_naming_the_leaf_and_both_shapes():
    params = _mlp_params()
    grads = jax.tree.map(jnp.ones_like, params)
    grads["Dense_1"]["kernel"] = jnp.ones((16, 8))
    for name in ("mulo-cpu", "muvelo-cpu"):
        opt = lopt.load(name, num_steps=10)
        with pytest.raises(lopt.learned.GradShapeError,
                           match=r"'Dense_1/kernel' has shape \(16, 8\) but the parameter has "
                                 r"shape \(16, 16\)"):
            opt.update(grads, opt.init(params), params, value=jnp.float32(1.0))


def test_an_empty_leaf_takes_no_matrix_role_and_leaves_the_readout_alone():
    params = {**_mlp_params(), "empty": jnp.zeros((0, 16))}   # sorts last of all the paths
    roles = lopt.infer_roles(params)
    assert roles["empty"] == "vector"
    assert roles["Dense_2"]["kernel"] == "output" and roles["Dense_1"]["kernel"] == "hidden"
    opt = lopt.load("mulo-cpu")
    u, _ = opt.update(jax.tree.map(jnp.ones_like, params), opt.init(params), params)
    clean = {k: v for k, v in params.items() if k != "empty"}
    u0, _ = opt.update(jax.tree.map(jnp.ones_like, clean), opt.init(clean), clean)
    np.testing.assert_array_equal(u["Dense_2"]["kernel"], u0["Dense_2"]["kernel"])
    assert u["empty"].shape == (0, 16)


def test_an_invalid_regex_in_role_overrides_is_a_typed_error_naming_the_pattern():
    params = _mlp_params()
    with pytest.raises(lopt.mup.roles.RoleOverrideError,
                       match=r"role_overrides pattern 'Dense_\[' is not a valid regular "
                             r"expression \(unterminated character set"):
        lopt.infer_roles(params, overrides={"Dense_[": "hidden"})
    with pytest.raises(lopt.mup.roles.RoleOverrideError, match="role_overrides pattern"):
        opt = lopt.load("mulo-cpu", role_overrides={"Dense_[": "hidden"})
        opt.update(params, opt.init(params), params)
