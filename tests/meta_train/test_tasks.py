"""Data, task models and the inner-training helper."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from meta_train import data as D
from meta_train import tasks as T
from meta_train.inner import train
from meta_train.models import MLPSpec
from needs_data import FMNIST, needs_data


@needs_data(FMNIST)
def test_idx_reader_on_real_fashion_mnist():
    d = D.fashion_mnist_dir()
    xtr = D.read_idx(d / "train-images-idx3-ubyte.gz")
    ytr = D.read_idx(d / "train-labels-idx1-ubyte.gz")
    xte = D.read_idx(d / "t10k-images-idx3-ubyte.gz")
    assert xtr.shape == (60000, 28, 28) and xte.shape == (10000, 28, 28)
    assert xtr.dtype == np.uint8 and xtr.max() == 255
    np.testing.assert_array_equal(np.bincount(ytr), np.full(10, 6000))


def test_idx_reader_rejects_truncated_file(tmp_path):
    f = tmp_path / "bad-idx"
    f.write_bytes(b"\x00\x00\x08\x02" + (3).to_bytes(4, "big") + (3).to_bytes(4, "big") + b"ab")
    with pytest.raises(ValueError, match="truncated"):
        D.read_idx(f)


def test_batches_are_deterministic_given_key():
    t = T.get_task("mlp-digits8-w64-d2")
    a = t.sample(t.data, jax.random.key(7), "train")
    b = t.sample(t.data, jax.random.key(7), "train")
    c = t.sample(t.data, jax.random.key(8), "train")
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    lm = T.get_task("lm-stdlib-d32-l1-c16")
    x, y = lm.sample(lm.data, jax.random.key(0), "train")
    assert x.shape == (32, 16)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])   # next-token targets


CHEAP = ["mlp-digits8-w64-d2", "mlp-digits8-w32-d2-sp", "lm-stdlib-d32-l1-c16-h2",
         "lm-stdlib-d32-l1-c16-h2-r4", "rf-s1.0-n64-m512"]


@pytest.mark.parametrize("name", CHEAP)
def test_loss_at_init_and_adamw_descends(name):
    t = T.get_task(name)
    params = t.init(jax.random.key(0))
    batch = t.sample(t.data, jax.random.key(1), "train")
    l0 = float(t.loss(params, batch))
    if name.startswith("rf"):
        assert 0.2 < l0 / t.normalizer < 5.0         # E[y^2]/2 up to batch noise
    elif name.endswith("-sp"):
        assert 0.5 * math.log(10) < l0 < 3 * math.log(10)
    else:                                            # zero-init μP readout: exactly uniform
        np.testing.assert_allclose(l0, t.normalizer, rtol=1e-5)
    lr = {"rf": 0.05, "lm": 1e-2}.get(name[:2], 3e-3)
    res = jax.jit(lambda k: train(t, optax.adamw(lr), key=k, num_steps=60))(jax.random.key(2))
    assert not bool(res.diverged)
    assert float(jnp.mean(res.losses[-10:])) < 0.85 * float(jnp.mean(res.losses[:3]))


def test_registry_lists_required_tasks():
    names = list(T.TASKS)
    assert len([n for n in names if n.startswith("mlp-fmnist8-w") and n.endswith("-d3")]) >= 3
    assert len([n for n in names if n.startswith("mlp-fmnist14-w")]) >= 3
    assert any(n.endswith("-d16") for n in names)
    assert any(n.startswith("mlp-fmnist28-w2048") for n in names)
    assert len([n for n in names if n.startswith("lm-")]) >= 2
    assert any(n.startswith("rf-") for n in names)
    with pytest.raises(ValueError, match="unknown task"):
        T.get_task("mlp-cifar-w1")


def test_mup_mlp_activation_scale_constant_across_width():
    x = jax.random.normal(jax.random.key(0), (256, 64))
    rms = {}
    for w in (64, 256, 1024):
        spec = MLPSpec(in_dim=64, width=w, depth=3)
        params = spec.init(jax.random.key(1))
        # give the readout a nonzero μP-sized value to check the logits scale too
        params["layer_3"]["w"] = jax.random.normal(jax.random.key(2), (w, 10))
        logits, pre = spec.apply(params, x, return_preacts=True)
        rms[w] = [float(jnp.sqrt(jnp.mean(p ** 2))) for p in pre]
        assert float(jnp.sqrt(jnp.mean(logits ** 2))) < 1.0
    for layer in range(3):
        vals = [rms[w][layer] for w in rms]
        assert max(vals) / min(vals) < 1.3, vals


def test_divergence_is_reported_not_raised():
    t = T.get_task("mlp-digits8-w64-d2-sp")
    res = jax.jit(lambda k: train(t, optax.sgd(1e6), key=k, num_steps=20))(jax.random.key(0))
    assert bool(res.diverged) and 0 <= int(res.diverged_at) < 20
    assert bool(jnp.isinf(res.losses[-1]))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(res.params))


def test_a_vmapped_group_runs_an_optimizers_periodic_branch_only_on_its_steps():
    # the eval suite vmaps LRs and seeds; a periodic lax.cond on the step count (Schatten-p's
    # re-choice of p) must stay a branch, not become a select computing it every step, and a
    # diverged member must still keep its last finite params
    t = T.get_task("mlp-digits8-w64-d2-sp")
    seen = []

    def periodic(every):
        def update(u, count, params=None):
            def costly():
                jax.debug.callback(lambda c: seen.append(int(np.max(c))), count)
                return jax.tree.map(lambda x: 2.0 * x, u)
            u = jax.lax.cond(count % every == 0, costly, lambda: u)
            return u, count + 1
        return optax.GradientTransformation(lambda p: jnp.int32(0), update)

    def one(lr):
        return train(t, optax.chain(periodic(3), optax.scale(-lr)), key=jax.random.key(0),
                     num_steps=9)

    res = jax.jit(jax.vmap(one))(jnp.asarray([1e-2, 1e6]))
    assert seen and sorted(set(seen)) == [0, 3, 6]
    assert not bool(res.diverged[0]) and bool(res.diverged[1])
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(res.params))


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=needs_data(n)) for n in T.TASKS])
def test_every_registered_task_starts_near_its_expected_loss_and_adamw_descends(name):
    t = T.get_task(name)
    params = t.init(jax.random.key(0))
    batch = t.sample(t.data, jax.random.key(1), "train")
    l0 = float(t.loss(params, batch))
    assert np.isfinite(l0)
    if name.startswith(("mlp", "lm", "cnn")) and not name.endswith("-sp"):
        np.testing.assert_allclose(l0, t.normalizer, rtol=1e-5)   # zero-init μP readout
    else:
        assert 0.1 < l0 / t.normalizer < 5.0
    lr = {"rf": 0.05, "lm": 1e-2}.get(name[:2], 3e-3 if "-d16" in name else 1e-2)
    res = jax.jit(lambda k: train(t, optax.adamw(lr), key=k, num_steps=25))(jax.random.key(2))
    assert not bool(res.diverged)
    assert float(jnp.mean(res.losses[-5:])) < 0.95 * float(jnp.mean(res.losses[:3])), name


def test_transformer_layer_inputs_are_what_each_hidden_kernel_multiplies():
    # Adaptive Schatten-p picks p from these; without them its criterion always picks p = 1
    task = T.get_task("lm-stdlib-d32-l1-c16-h2")
    params = task.init(jax.random.key(0))
    params["block_0"]["wq"] = 0.1 * jnp.ones_like(params["block_0"]["wq"])   # nonzero query
    batch = task.sample(task.data, jax.random.key(1))
    acts = task.extra_args(True)(params, batch)["activations"]
    assert task.extra_args(False) is None                      # an optimizer that needs none
    assert T.get_task("rf-s1.0-n64-m512").extra_args(True) is None   # a task that has none
    spec, blk, ins = task.spec, params["block_0"], acts["block_0"]
    tokens = batch[0]
    n = tokens.size
    assert acts["embed"] is None and acts["readout"] is None and ins["ln1"]["scale"] is None
    for name in ("wq", "wk", "wv", "wo", "mlp_in", "mlp_out"):
        assert ins[name].shape == (n, blk[name].shape[0]), name
    # q/k/v share the LayerNorm output; mlp_out's input is gelu of mlp_in's product
    np.testing.assert_array_equal(ins["wq"], ins["wv"])
    np.testing.assert_allclose(ins["mlp_out"], jax.nn.gelu(ins["mlp_in"] @ blk["mlp_in"]),
                               rtol=1e-5, atol=1e-6)
    # replaying the block from its recorded inputs gives the model's logits
    h = params["embed"][tokens] + params["pos"][:tokens.shape[1]]
    h = h.reshape(n, -1) + ins["wo"] @ blk["wo"]
    h = h + ins["mlp_out"] @ blk["mlp_out"]
    from meta_train.models import _layer_norm, forward_multiplier
    h = _layer_norm(h, params["ln_f"]["scale"], params["ln_f"]["bias"])
    mult = forward_multiplier("output", spec.d_model, mup=spec.mup)
    np.testing.assert_allclose((mult * h @ params["readout"]).reshape(
        spec.apply(params, tokens).shape), spec.apply(params, tokens), rtol=1e-4, atol=1e-4)
    # a factored attention weight has no kernel: its factors get no inputs
    low = T.get_task("lm-stdlib-d32-l1-c16-h2-r4")
    lp = low.init(jax.random.key(0))
    la = low.activations(lp, low.sample(low.data, jax.random.key(1)))["block_0"]
    assert la["wq"] == {"a": None, "b": None} and la["mlp_in"] is not None


@pytest.mark.parametrize("name, width, depth, family", [
    ("mlp-fmnist8-w128-d3", 128, 3, "mlp-fmnist8-w*-d3"),
    ("mlp-digits8-w64-d2-sp-b256", 64, 2, "mlp-digits8-w*-d2-sp-b256"),
    ("lm-fortunes-d64-l2-r16", 64, 2, "lm-fortunes-d*-l2-r16"),      # -d is d_model here
    ("lm-stdlib-d32-l1-c16-h2", 32, 1, "lm-stdlib-d*-l1-c16-h2"),
    ("rf-s1.0-n256", None, None, "rf-s1.0-n256"),
])
def test_a_task_name_parses_to_its_width_and_depth_and_back(name, width, depth, family):
    from meta_train.tasks import TaskName
    t = TaskName.parse(name)
    assert (str(t), t.width, t.depth, t.family) == (name, width, depth, family)
    if width is not None:
        wider, deeper = t.with_width(4 * width), t.with_depth(5 * depth)
        assert (wider.width, wider.depth, deeper.width, deeper.depth) == (
            4 * width, depth, width, 5 * depth)
        assert TaskName.parse(str(wider)) == wider and TaskName.parse(str(deeper)) == deeper
        assert t.without_depth() == deeper.without_depth() != t.with_width(1).without_depth()
    sp = t.variant("sp")
    assert sp.sp and str(sp).endswith("-sp") and not sp.variant("mup").sp
    assert str(sp.variant("sp")) == str(sp)


def test_an_unknown_task_name_is_one_line_naming_it():
    from meta_train.tasks import TaskName
    with pytest.raises(ValueError, match=r"^unknown task 'lm-fortunes-d64-lx'; see"):
        TaskName.parse("lm-fortunes-d64-lx")


@pytest.mark.parametrize("size,stride,c_in", [(8, 1, 1), (7, 2, 3), (28, 2, 8), (4, 1, 5)])
def test_the_cnn_tasks_convolution_is_laxs_3x3_same_convolution(size, stride, c_in):
    # the CNN tasks compute their convolutions as patches @ kernel (fast inside lax.scan on
    # XLA's CPU backend); they must stay the convolution Flax's nn.Conv computes
    from meta_train.models import conv3x3
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    h = jax.random.normal(k1, (2, size, size, c_in))
    w = jax.random.normal(k2, (3, 3, c_in, 6))
    want = jax.lax.conv_general_dilated(h, w, (stride, stride), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    got = conv3x3(h, w, stride)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
