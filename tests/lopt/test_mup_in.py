"""Where μP lives: a μP model (readout x 1/fan_in) trained by the LO with mup_in="model" and
the same plain model trained with optimizer-side μP (the default) follow the same trajectory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt
from meta_train.models import MLPSpec

SHIPPED = lopt.load_theta("mulo-cpu")[0]


def _plain_apply(spec: MLPSpec, params, x):
    """The same network without any forward multiplier (a plain Flax-style MLP)."""
    h = x
    for i in range(spec.depth + 1):
        z = h @ params[f"layer_{i}"]["w"] + params[f"layer_{i}"]["b"]
        h = jax.nn.relu(z) if i < spec.depth else z
    return h


def _losses(apply, params, opt, x, y, steps=50):
    def loss_fn(p):
        logp = jax.nn.log_softmax(apply(p, x))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], 1))

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, s = opt.update(g, s, p)
        return jax.tree.map(jnp.add, p, u), s, loss

    state, out = opt.init(params), []
    for _ in range(steps):
        params, state, loss = step(params, state)
        out.append(float(loss))
    return np.asarray(out)


@pytest.mark.parametrize("width", [64, 512])
def test_optimizer_side_mup_equals_model_side_mup(width):
    spec = MLPSpec(in_dim=16, width=width, depth=2)
    kx, ky, kp, kr = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(kx, (64, 16))
    y = jax.random.randint(ky, (64,), 0, 10)
    params = spec.init(kp)
    # A nonzero readout, so the equivalence is tested away from the zero init too.
    readout = jax.random.normal(kr, (width, 10))
    mup_params = {**params, "layer_2": {"w": readout, "b": params["layer_2"]["b"]}}
    # The plain model's readout holds what the μP model's multiplier applies: W / fan_in.
    plain_params = {**params, "layer_2": {"w": readout / width, "b": params["layer_2"]["b"]}}
    roles = spec.roles()
    model_side = _losses(spec.apply, mup_params,
                         lopt.make(SHIPPED, roles=roles, mup_in="model"), x, y)
    opt_side = _losses(lambda p, x: _plain_apply(spec, p, x), plain_params,
                       lopt.make(SHIPPED, roles=roles), x, y)
    assert model_side[-1] < 0.5 * model_side[0]           # it trains
    np.testing.assert_allclose(opt_side, model_side, rtol=2e-4, atol=2e-5)
    # Without optimizer-side μP the plain model takes fan_in-times larger readout steps.
    no_mup = _losses(lambda p, x: _plain_apply(spec, p, x), plain_params,
                     lopt.make(SHIPPED, roles=roles, mup_in="model"), x, y)
    assert np.max(np.abs(no_mup - model_side)) > 0.05


def test_mup_in_is_validated():
    with pytest.raises(ValueError, match="mup_in"):
        lopt.make(SHIPPED, mup_in="readout")
