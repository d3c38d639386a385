"""μP roles and fan-ins for the common Flax layers, and one role path for our own tasks."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt
from eval.clients import CNN, LM
from meta_train.tasks import TASKS, get_task
from meta_train.data import DataNotFoundError


def _flat(tree):
    return {lopt.mup.roles.path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_flax_transformer_roles_and_fan_ins():
    model = LM(vocab=50, d=32, depth=1, heads=4, context=8)
    params = model.init(jax.random.key(0), jnp.zeros((2, 8), jnp.int32))["params"]
    roles, fans = _flat(lopt.infer_roles(params)), _flat(lopt.fan_ins(params))
    assert roles["embed/embedding"] == "input" and roles["pos_embed/embedding"] == "input"
    assert roles["head/kernel"] == "output"
    attn = "Block_0/MultiHeadDotProductAttention_0"
    for n in ("query", "key", "value"):
        assert roles[f"{attn}/{n}/kernel"] == "hidden"
        assert fans[f"{attn}/{n}/kernel"] == 32                    # [d, heads, dh]: d
        assert roles[f"{attn}/{n}/bias"] == "vector"
    assert roles[f"{attn}/out/kernel"] == "hidden" and fans[f"{attn}/out/kernel"] == 32  # h*dh
    assert roles["Block_0/LayerNorm_0/scale"] == "vector"
    assert roles["Block_0/Dense_0/kernel"] == "hidden"
    mults = _flat(lopt.lr_multipliers(params, lopt.infer_roles(params)))
    assert mults[f"{attn}/query/kernel"] == pytest.approx(1 / 32)
    assert mults["Block_0/Dense_1/kernel"] == pytest.approx(1 / 128)
    out = _flat(lopt.readout_multipliers(params, lopt.infer_roles(params)))
    assert out["head/kernel"] == pytest.approx(1 / 32) and out["embed/embedding"] == 1.0


def test_conv_roles_fan_in_is_window_times_channels():
    params = CNN(8).init(jax.random.key(0), jnp.zeros((1, 64)))["params"]
    lopt.mup.roles._warned.clear()              # each guess is announced once per process
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        roles = _flat(lopt.infer_roles(params))
    assert roles["Conv_0/kernel"] == "input" and roles["Conv_1/kernel"] == "hidden"
    assert roles["Dense_0/kernel"] == "output"
    assert _flat(lopt.fan_ins(params))["Conv_1/kernel"] == 3 * 3 * 8
    # Positional guesses are announced, naming the leaf and the override that pins it.
    text = " ".join(str(x.message) for x in w)
    assert "Conv_0/kernel" in text and "role_overrides" in text


def test_named_roles_need_no_positional_guess():
    params = LM(vocab=20, d=16, depth=1, heads=2, context=4).init(
        jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lopt.infer_roles(params)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_declared_task_roles_equal_inferred_roles(name):
    try:
        task = get_task(name)
    except DataNotFoundError:   # roles are the model's, not the data's: the same model on
        task = get_task(name.replace("fmnist28", "fmnist8").replace("fmnist14", "fmnist8")
                        .replace("lm-fortunes", "lm-stdlib"))    # data that always ships
    params = jax.eval_shape(task.init, jax.random.key(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inferred = lopt.infer_roles(params)
    assert jax.tree.leaves(inferred) == jax.tree.leaves(task.roles)
    assert jax.tree.structure(inferred) == jax.tree.structure(task.roles)
