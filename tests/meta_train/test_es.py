"""ES / PES estimators against true gradients of smooth objectives."""

import jax
import jax.numpy as jnp
import numpy as np

from meta_train import es as ES

H = jnp.array([0.2, 0.5, 1.0, 2.0])


def quadratic_problem(noise=0.0):
    """Inner problem: x <- x - exp(theta.log_lr) * H x on f(x) = 0.5 sum(H x^2); the
    meta-loss per step is f(x) / f(x0). Smooth in theta, with an LO-like parametrized update."""
    x0 = jnp.ones(4)
    f0 = 0.5 * jnp.sum(H * x0 ** 2)

    def init_run(theta, key):
        del theta, key
        return x0

    def step(theta, x, data, key, t, horizon=None):
        del data, key, t, horizon
        loss = 0.5 * jnp.sum(H * x ** 2) / f0
        x = x - jnp.exp(theta["log_lr"]) * H * x
        return x, loss

    return ES.InnerProblem(init_run, step)


def true_mean_loss(theta, steps, start_x=None, weight=lambda t: 1.0):
    prob = quadratic_problem()
    x = prob.init_run(theta, None) if start_x is None else start_x
    total = 0.0
    for t in range(steps):
        x, loss = prob.step(theta, x, None, None, t)
        total = total + weight(t) * loss
    return total


THETA = {"log_lr": jnp.log(jnp.array([0.05, 0.1, 0.2, 0.1]))}


def _cos(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _estimate(method, truncations, pairs=512, k=10, horizon=20, seed=0, loss_weight="uniform"):
    cfg = ES.ESConfig(method=method, num_pairs=pairs, sigma=0.01, unroll_length=k,
                      min_horizon=horizon, max_horizon=horizon, stagger=False, loss_clip=10.0,
                      loss_weight=loss_weight)
    prob = quadratic_problem()
    state = ES.init_es_state(prob, THETA, jax.random.PRNGKey(seed), cfg)
    total = jnp.zeros(4)
    for i in range(truncations):
        g, state, _ = ES.es_gradient(THETA, state, jax.random.PRNGKey(100 + i), None,
                                     problem=prob, cfg=cfg)
        total = total + g["log_lr"]
    return np.asarray(total), state


def test_truncated_es_matches_true_gradient_within_a_truncation():
    est, _ = _estimate("tes", 1, pairs=1024)
    true = jax.grad(lambda th: true_mean_loss(th, 10) / 10)(THETA)["log_lr"]
    assert _cos(est, true) > 0.95


def test_pes_unbiased_across_truncation_boundary_where_tes_is_biased():
    # Horizon 20 = two truncations of 10. Summed over both truncations, PES estimates the
    # gradient of the whole-horizon loss; truncated ES misses the effect of the first
    # truncation's updates on the second truncation's losses.
    true = jax.grad(lambda th: true_mean_loss(th, 20) / 10)(THETA)["log_lr"]
    pes, _ = _estimate("pes", 2, pairs=2048)
    tes, _ = _estimate("tes", 2, pairs=2048)
    err = lambda g: float(np.linalg.norm(g - true) / np.linalg.norm(true))
    assert _cos(pes, true) > 0.95
    assert err(pes) < 0.15
    assert err(tes) > 3 * err(pes) and err(tes) > 0.15   # measured: ~0.21 vs ~0.04


def test_pes_with_linear_loss_weight_estimates_the_late_weighted_objective():
    # loss_weight="linear" weighs step t of a 20-step run by 2(t+1)/20: PES summed over the
    # run's two truncations must follow that objective's gradient, which points elsewhere
    # than the uniform one's (the late steps favour a different balance of the four rates).
    w = lambda t: 2.0 * (t + 1) / 20
    true_w = jax.grad(lambda th: true_mean_loss(th, 20, weight=w) / 10)(THETA)["log_lr"]
    true_u = jax.grad(lambda th: true_mean_loss(th, 20) / 10)(THETA)["log_lr"]
    pes, _ = _estimate("pes", 2, pairs=2048, loss_weight="linear")
    err = lambda g, ref: float(np.linalg.norm(g - ref) / np.linalg.norm(ref))
    assert err(pes, true_w) < 0.15
    assert err(true_u, true_w) > 0.2 and err(pes, true_u) > 2 * err(pes, true_w)


def test_pes_accumulator_resets_with_the_inner_run():
    _, state = _estimate("pes", 2, pairs=4)
    xi_before = np.asarray(state.xi)
    assert np.all(np.abs(xi_before) > 0)
    cfg = ES.ESConfig(method="pes", num_pairs=4, sigma=0.01, unroll_length=10,
                      min_horizon=20, max_horizon=20, stagger=False, loss_clip=10.0)
    key = jax.random.PRNGKey(7)
    _, new, m = ES.es_gradient(THETA, state, key, None, problem=quadratic_problem(), cfg=cfg)
    eps = 0.01 * jax.random.normal(key, (4, 4))
    np.testing.assert_allclose(np.asarray(new.xi), np.asarray(eps), rtol=1e-6)  # reset: xi=eps
    assert float(m["resets"]) == 4.0


def test_antithetic_estimate_is_exactly_zero_for_constant_objective():
    def step(theta, x, data, key, t, horizon):
        return x, jnp.float32(0.7)
    prob = ES.InnerProblem(lambda th, k: jnp.zeros(2), step)
    for method in ("pes", "tes"):
        cfg = ES.ESConfig(method=method, num_pairs=8, unroll_length=5, min_horizon=7,
                          max_horizon=30)
        state = ES.init_es_state(prob, THETA, jax.random.PRNGKey(0), cfg)
        for i in range(3):
            g, state, _ = ES.es_gradient(THETA, state, jax.random.PRNGKey(i), None,
                                         problem=prob, cfg=cfg)
            assert np.all(np.asarray(g["log_lr"]) == 0.0)


def test_nan_inner_run_leaves_estimate_and_state_finite():
    def step(theta, x, data, key, t, horizon):
        # blows up after a few steps whenever the perturbed lr is large
        x = x * (1.0 + 50.0 * jnp.exp(theta["log_lr"][0]))
        return x, jnp.where(t > 3, jnp.nan, jnp.sum(x))
    prob = ES.InnerProblem(lambda th, k: jnp.ones(3), step)
    cfg = ES.ESConfig(method="pes", num_pairs=4, unroll_length=8, min_horizon=10,
                      max_horizon=20)
    state = ES.init_es_state(prob, THETA, jax.random.PRNGKey(0), cfg)
    for i in range(4):
        g, state, m = ES.es_gradient(THETA, state, jax.random.PRNGKey(i), None,
                                     problem=prob, cfg=cfg)
        # every step's loss is above the ceiling or NaN for both particles of every pair:
        # each counts as the ceiling, so the pair's difference, and the estimate, are exactly
        # zero (a NaN turned into any other number would show up as a spurious gradient)
        assert all(np.all(np.asarray(x) == 0.0) for x in jax.tree.leaves(g))
        assert float(m["meta_loss"]) == cfg.loss_clip
    # pairs restart at the step after a NaN: no run gets past step 5 of its 10-20 steps,
    # and the states kept are the last finite ones
    assert int(np.max(np.asarray(state.pos.t))) <= 5
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.pos.core))


def test_pes_unbiased_with_a_reset_in_the_middle_of_a_truncation():
    # Horizon 15, truncations of 10: the second truncation holds the end of one run (5
    # steps) and the start of the next (5 steps). Three truncations are exactly two runs, so
    # the summed PES estimate is the gradient of twice one run's total loss (over K=10).
    true = 2 * jax.grad(lambda th: true_mean_loss(th, 15) / 10)(THETA)["log_lr"]
    cfg = ES.ESConfig(method="pes", num_pairs=2048, sigma=0.01, unroll_length=10,
                      min_horizon=15, max_horizon=15, stagger=False, loss_clip=10.0)
    prob = quadratic_problem()
    state = ES.init_es_state(prob, THETA, jax.random.PRNGKey(0), cfg)
    total = np.zeros(4)
    for i in range(3):
        g, state, m = ES.es_gradient(THETA, state, jax.random.PRNGKey(100 + i), None,
                                     problem=prob, cfg=cfg)
        total += np.asarray(g["log_lr"])
        if i == 1:
            assert float(m["resets"]) == cfg.num_pairs       # the reset fell inside it
    err = float(np.linalg.norm(total - true) / np.linalg.norm(true))
    assert _cos(total, true) > 0.95 and err < 0.15


def _one_sided_problem():
    """The quadratic, except that while ``data`` is True a particle whose first coordinate
    is perturbed upwards blows up (NaN) at step 3: one particle of every pair diverges."""
    base = quadratic_problem()

    def step(theta, x, data, key, t, horizon):
        x, loss = base.step(theta, x, None, key, t, horizon)
        up = theta["log_lr"][0] > THETA["log_lr"][0]
        return x, jnp.where(data & up & (t == 3), jnp.nan, loss)

    return ES.InnerProblem(base.init_run, step)


def test_pes_pair_restarts_jointly_after_one_sided_divergence():
    cfg = ES.ESConfig(method="pes", num_pairs=2048, sigma=0.01, unroll_length=10,
                      min_horizon=20, max_horizon=20, stagger=False, loss_clip=10.0)
    prob = _one_sided_problem()
    state = ES.init_es_state(prob, THETA, jax.random.PRNGKey(0), cfg)
    g, state, _ = ES.es_gradient(THETA, state, jax.random.PRNGKey(5), jnp.bool_(True),
                                 problem=prob, cfg=cfg)
    # Both particles of every pair stand at the same step of their runs, and the pairs that
    # diverged restarted their accumulated perturbation together (xi = eps).
    np.testing.assert_array_equal(np.asarray(state.pos.t), np.asarray(state.neg.t))
    # Every pair diverges on one side at step 3 of each run, so within these 10 steps it
    # restarted twice (steps 4 and 8) and both particles stand 2 steps into a fresh run,
    # with the accumulated perturbation reset to this truncation's.
    np.testing.assert_array_equal(np.asarray(state.pos.t), 2)
    np.testing.assert_array_equal(np.asarray(state.neg.t), 2)
    eps = 0.01 * np.asarray(jax.random.normal(jax.random.PRNGKey(5), (2048, 4)))
    np.testing.assert_allclose(np.asarray(state.xi), eps, rtol=1e-6)
    # The next two truncations finish that run (steps 2-19) and start the next (0-1): with
    # the pairs in phase, their summed estimate is the gradient of one whole run's loss.
    true = jax.grad(lambda th: true_mean_loss(th, 20) / 10)(THETA)["log_lr"]
    total = np.zeros(4)
    for i in range(2):
        g, state, _ = ES.es_gradient(THETA, state, jax.random.PRNGKey(50 + i),
                                     jnp.bool_(False), problem=prob, cfg=cfg)
        np.testing.assert_array_equal(np.asarray(state.pos.t), np.asarray(state.neg.t))
        total += np.asarray(g["log_lr"])
    err = float(np.linalg.norm(total - true) / np.linalg.norm(true))
    assert _cos(total, true) > 0.95 and err < 0.2
