"""Role inference on ordinary Flax models, overrides, and μP init helpers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lopt


class LinenMLP(nn.Module):
    depth: int = 12

    @nn.compact
    def __call__(self, x):
        for _ in range(self.depth - 1):
            x = nn.relu(nn.Dense(32)(x))
        return nn.Dense(10)(x)


def test_linen_mlp_roles_in_natural_layer_order():
    params = LinenMLP().init(jax.random.key(0), jnp.ones((1, 8)))["params"]
    roles = lopt.infer_roles(params)
    assert roles["Dense_0"]["kernel"] == "input"
    assert roles["Dense_11"]["kernel"] == "output"   # sorts before Dense_2 lexicographically
    for i in range(1, 11):
        assert roles[f"Dense_{i}"]["kernel"] == "hidden", i
    assert all(roles[f"Dense_{i}"]["bias"] == "vector" for i in range(12))
    mults = lopt.lr_multipliers(params, roles, mup=True)
    assert mults["Dense_3"]["kernel"] == pytest.approx(1 / 32)
    assert mults["Dense_0"]["kernel"] == 1.0 and mults["Dense_11"]["kernel"] == 1.0


class NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.List([nnx.Linear(8, 16, rngs=rngs), nnx.Linear(16, 16, rngs=rngs),
                                nnx.Linear(16, 16, rngs=rngs)])
        self.norm = nnx.LayerNorm(16, rngs=rngs)
        self.head = nnx.Linear(16, 4, rngs=rngs)


def test_nnx_model_roles_by_name_and_position():
    state = nnx.state(NnxMLP(nnx.Rngs(0)), nnx.Param)
    roles = lopt.infer_roles(state)
    flat = {lopt.mup.roles.path_str(p): r for p, r in
            jax.tree_util.tree_flatten_with_path(roles)[0]}
    assert flat["head/kernel/value"] == "output"
    assert flat["layers/0/kernel/value"] == "input"
    assert flat["layers/1/kernel/value"] == "hidden"
    assert flat["layers/2/kernel/value"] == "hidden"
    assert flat["norm/scale/value"] == "vector"


def test_transformer_like_names():
    params = {"embed": {"embedding": jnp.ones((100, 32))},
              "block_0": {"attn": {"qkv": jnp.ones((32, 96))}, "mlp": jnp.ones((32, 32))},
              "lm_head": {"kernel": jnp.ones((32, 100))}}
    roles = lopt.infer_roles(params)
    assert roles["embed"]["embedding"] == "input"
    assert roles["lm_head"]["kernel"] == "output"
    assert roles["block_0"]["attn"]["qkv"] == "hidden"
    assert roles["block_0"]["mlp"] == "hidden"


def test_overrides_and_errors():
    params = {"a": jnp.ones((4, 4)), "b": jnp.ones((4, 4)), "c": jnp.ones((4, 2))}
    roles = lopt.infer_roles(params, overrides={r"^c$": "hidden", "b": "output"})
    assert roles == {"a": "input", "b": "output", "c": "hidden"}
    with pytest.raises(ValueError, match="must be one of"):
        lopt.infer_roles(params, overrides={"a": "embedding"})
    with pytest.raises(ValueError, match="roles tree has"):
        lopt.make(lopt.init_theta(jax.random.key(0)), roles={"a": "input"}).update(
            params, lopt.make(lopt.init_theta(jax.random.key(0))).init(params), params)
    table = lopt.describe_roles(params)
    assert "input" in table and "lr_mult" in table and "0.25" in table
    # a base-width LO's own multipliers: hidden c (fan_in 4) steps 512/4 = 128 x 1 (depth 1)
    roles = {r"^c$": "hidden", "b": "output"}
    assert "128" in lopt.describe_roles(params, overrides=roles, lo="mulo-horizon-cpu")
    assert "128" in lopt.describe_roles(params, overrides=roles,
                                        lo=lopt.LOConfig(mup_base=512.0, depth_ref=2))


def test_mup_init_follows_table():
    params = LinenMLP(depth=3).init(jax.random.key(0), jnp.ones((1, 64)))["params"]
    new = lopt.mup_init_params(jax.random.key(1), params)
    assert float(jnp.abs(new["Dense_2"]["kernel"]).max()) == 0.0       # zero readout
    # He's ReLU gain sqrt(2) on N(0, 1/fan_in), as the MLP tasks (meta_train.models)
    np.testing.assert_allclose(jnp.std(new["Dense_0"]["kernel"]), (2 / 64) ** 0.5, rtol=0.1)
    np.testing.assert_allclose(jnp.std(new["Dense_1"]["kernel"]), (2 / 32) ** 0.5, rtol=0.1)
    lecun = lopt.mup_init_params(jax.random.key(1), params, gain=1.0)
    np.testing.assert_allclose(jnp.std(lecun["Dense_1"]["kernel"]), 32 ** -0.5, rtol=0.1)
    assert lopt.forward_multiplier("output", 512, output_mult=2.0) == pytest.approx(2 / 512)
    assert lopt.forward_multiplier("output", 512, mup=False) == 1.0
