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


BASE = lopt.LOConfig(mup_base=512.0, depth_ref=1, step_mult=1.5625e-4)


@pytest.mark.parametrize("width,config", [
    (64, None), pytest.param(512, None, marks=pytest.mark.slow),
    pytest.param(256, BASE, marks=pytest.mark.slow)])
def test_optimizer_side_mup_equals_model_side_mup(width, config):
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
                         lopt.make(SHIPPED, roles=roles, mup_in="model", config=config), x, y)
    opt_side = _losses(lambda p, x: _plain_apply(spec, p, x), plain_params,
                       lopt.make(SHIPPED, roles=roles, config=config), x, y)
    assert model_side[-1] < 0.5 * model_side[0]           # it trains
    np.testing.assert_allclose(opt_side, model_side, rtol=2e-4, atol=2e-5)
    # Without optimizer-side μP the plain model takes fan_in-times larger readout steps.
    no_mup = _losses(lambda p, x: _plain_apply(spec, p, x), plain_params,
                     lopt.make(SHIPPED, roles=roles, mup_in="model", config=config), x, y)
    assert np.max(np.abs(no_mup - model_side)) > 0.05


def test_mup_in_is_validated():
    with pytest.raises(ValueError, match="mup_in"):
        lopt.make(SHIPPED, mup_in="readout")


def test_base_width_and_depth_rule_set_the_hidden_and_readout_multipliers():
    # mup_base b: hidden b/fan_in, readout b/fan_in (b when the model holds 1/fan_in);
    # depth_ref r: hidden x min(1, r / number of hidden matrices)
    spec = MLPSpec(in_dim=16, width=128, depth=5)          # 4 hidden matrices
    params, roles = spec.init(jax.random.key(0)), spec.roles()
    flat = lambda t: {k: v for k, v in zip(
        [lopt.mup.roles.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(t)[0]],
        jax.tree.leaves(t))}
    m = flat(lopt.lr_multipliers(params, roles, base=512.0, depth_ref=2))
    assert m["layer_1/w"] == pytest.approx(512 * (2 / 4) / 128)
    assert m["layer_0/w"] == 1.0 and m["layer_5/w"] == 1.0 and m["layer_1/b"] == 1.0
    assert flat(lopt.lr_multipliers(params, roles))["layer_1/w"] == pytest.approx(1 / 128)
    r_model = flat(lopt.readout_multipliers(params, roles, base=512.0, in_model=True))
    r_plain = flat(lopt.readout_multipliers(params, roles, base=512.0))
    assert r_model["layer_5/w"] == 512.0 and r_plain["layer_5/w"] == pytest.approx(4.0)
    assert r_model["layer_1/w"] == 1.0
    assert lopt.mup.roles.model_depth(params, roles) == 4
    with pytest.raises(ValueError, match="mup_base"):
        lopt.LOConfig(mup_base=0.0)
    with pytest.raises(ValueError, match="depth_ref"):
        lopt.LOConfig(depth_ref=-1)


def test_depth_counts_an_mlps_hidden_matrices_and_a_transformers_blocks():
    # The 1/depth rule's L: a 2-block transformer holds 12 hidden matrices but is 2 deep, as
    # deep as the 3-layer MLPs the shipped depth_ref=2 was meta-trained on; counting matrices
    # shrank its hidden steps 6x and cost mulo-horizon-cpu 2.49 -> 2.21 final loss (README).
    from meta_train.tasks import get_task
    depth = lopt.mup.roles.model_depth
    # (the suite's lm-fortunes-* cells are the same models on another corpus)
    for name, want in (("lm-stdlib-d64-l2", 2), ("lm-stdlib-d64-l6", 6),
                       ("lm-stdlib-d128-l2-r16", 2), ("mlp-fmnist8-w128-d16", 15)):
        task = get_task(name)
        assert depth(jax.eval_shape(task.init, jax.random.key(0)), task.roles) == want, name
    z = lambda *s: np.zeros(s, np.float32)
    # Flax linen: one MLP_0 holding Dense_0..Dense_5 counts its 4 hidden Dense layers
    mlp = {"MLP_0": {f"Dense_{i}": {"kernel": z(8, 8), "bias": z(8)} for i in range(6)}}
    assert depth(mlp, lopt.infer_roles(mlp, {"Dense_0/": "input", "Dense_5/k": "output"})) == 4
    # nnx-style list of blocks, attention kernels [d, heads, head_dim] inside each
    blocks = {"embed": {"embedding": z(10, 8)}, "head": {"kernel": z(8, 10)},
              "blocks": {str(i): {"attn": {"query": {"kernel": z(8, 2, 4)},
                                           "out": {"kernel": z(2, 4, 8)}},
                                  "mlp": {"kernel": z(8, 8)}} for i in range(3)}}
    roles = lopt.infer_roles(blocks)
    assert depth(blocks, roles) == 3
    m = lopt.lr_multipliers(blocks, roles, base=16.0, depth_ref=2)
    assert m["blocks"]["1"]["mlp"]["kernel"] == pytest.approx(16 * (2 / 3) / 8)
    assert "depth 3 (model_depth)" in lopt.describe_roles(
        blocks, roles, lo=lopt.LOConfig(mup_base=16.0, depth_ref=2))
