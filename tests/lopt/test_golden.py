"""Golden test: the SP learned optimizer reproduces learned_optimization's AdafacMLPLOpt.

``tests/golden/adafac_mlp.npz`` holds a 6-step trajectory of the reference implementation
(learned_optimization 0.0.1, ``AdafacMLPLOpt(hidden_size=32, hidden_layers=2)``) on a
mixed tree (bias, scalar, square matrix, rank-3 tensor, matrix) with random meta-parameters;
``tests/golden/make_adafac_golden.py`` documents how it was produced. Importing its theta
with :func:`lopt.from_learned_optimization` and replaying the gradients must give the same
update for every leaf and step, to 1e-4 of the step's RMS.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt

GOLDEN = os.path.join(os.path.dirname(__file__), os.pardir, "golden", "adafac_mlp.npz")
TOL = 1e-4  # max |ours - reference| per leaf, as a fraction of the reference step's RMS


def load_golden():
    z = np.load(GOLDEN)
    theta = {}
    for key in z.files:
        if key.startswith("theta/"):
            node = theta
            parts = key.split("/")[1:]
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = z[key]
    leaves = sorted(k.split("/", 1)[1] for k in z.files if k.startswith("params0/"))
    pick = lambda prefix: {k: z[f"{prefix}/{k}"] for k in leaves}
    return z, theta, pick("params0"), pick("grads"), pick("updates")


def replay_deviation(theta_lo, params0, grads, ref_updates, num_steps):
    """Runs lopt's SP LO on the golden gradients; returns {leaf: [T] max |du| / rms(ref)}."""
    theta = lopt.from_learned_optimization(theta_lo)
    # Roles only matter for μLO; fixing them keeps this test independent of role inference.
    opt = lopt.make(theta, mup=False, roles={k: "vector" for k in params0})
    params = jax.tree.map(jnp.asarray, params0)
    state = opt.init(params)
    update = jax.jit(lambda g, s, p: opt.update(g, s, p))
    dev = {k: [] for k in params0}
    for t in range(num_steps):
        g = {k: jnp.asarray(v[t]) for k, v in grads.items()}
        u, state = update(g, state, params)
        for k in params0:
            ref = ref_updates[k][t].astype(np.float64)
            rms = np.sqrt(np.mean(np.square(ref)))
            dev[k].append(float(np.max(np.abs(np.asarray(u[k], np.float64) - ref)) / rms))
        params = optax.apply_updates(params, u)
    return {k: np.asarray(v) for k, v in dev.items()}


def test_golden_file_matches_sp_defaults():
    z, theta, _, _, _ = load_golden()
    assert int(z["hidden_size"]) == lopt.SP_LO.hidden_size
    assert int(z["hidden_layers"]) == lopt.SP_LO.hidden_layers
    assert float(z["step_mult"]) == pytest.approx(lopt.SP_LO.resolved_step_mult)
    assert float(z["exp_mult"]) == pytest.approx(lopt.SP_LO.exp_mult)
    lopt.check_theta(lopt.from_learned_optimization(theta), lopt.SP_LO)


def test_replays_reference_trajectory():
    z, theta, params0, grads, ref_updates = load_golden()
    dev = replay_deviation(theta, params0, grads, ref_updates, int(z["num_steps"]))
    worst = {k: float(v.max()) for k, v in dev.items()}
    assert max(worst.values()) <= TOL, (
        "update deviates from learned_optimization's AdafacMLPLOpt (max |du| / step RMS "
        f"per leaf over {int(z['num_steps'])} steps): {worst}")
