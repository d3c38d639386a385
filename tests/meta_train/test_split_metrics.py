"""Test metrics on the whole test split (``Task.split_metrics``), as the eval suite reports."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_train import tasks as T
from meta_train.inner import train
from meta_train.tasks import get_task


def _direct(task, params, x, y):
    logits = np.asarray(task.spec.apply(params, x), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, np.asarray(y)[..., None], -1)[..., 0]
    return nll.mean(), (logits.argmax(-1) == np.asarray(y)).mean()


@pytest.mark.parametrize("chunk", [256, 7])    # 7: a padded, masked last chunk
def test_image_split_metrics_average_every_test_example(chunk, monkeypatch):
    monkeypatch.setattr(T, "SPLIT_EVAL_CHUNK", chunk)
    task = get_task("mlp-digits8-w32-d3")
    params = task.init(jax.random.key(0))
    x, y = task.data["test"]
    got = jax.jit(task.split_metrics)(params, task.data)
    loss, acc = _direct(task, params, x, y)
    np.testing.assert_allclose(float(got["loss"]), loss, rtol=1e-5)
    np.testing.assert_allclose(float(got["accuracy"]), acc, atol=1e-6)


@pytest.mark.slow   # 10-30 s: make test runs it, the fast tier does not
def test_lm_split_metrics_cover_the_test_text_in_windows(monkeypatch):
    monkeypatch.setattr(T, "SPLIT_EVAL_CHUNK", 5)
    task = get_task("lm-stdlib-d32-l1-h2-c16")
    params = task.init(jax.random.key(0))
    tokens = np.asarray(task.data["test"].x)
    count = (len(tokens) - 1) // 16
    x = tokens[:count * 16].reshape(count, 16)
    y = tokens[1:count * 16 + 1].reshape(count, 16)
    got = task.split_metrics(params, task.data)
    loss, acc = _direct(task, params, jnp.asarray(x), y)
    np.testing.assert_allclose(float(got["loss"]), loss, rtol=1e-5)
    np.testing.assert_allclose(float(got["accuracy"]), acc, atol=1e-6)


def test_train_reports_whole_split_metrics_of_its_final_params():
    task = get_task("mlp-digits8-w32-d3")
    import optax
    res = train(task, optax.adam(1e-2), key=jax.random.key(1), num_steps=30,
                eval_batches=None)
    want = task.split_metrics(res.params, task.data)
    np.testing.assert_allclose(float(res.test_loss[-1]), float(want["loss"]), rtol=1e-6)
    # and training on digits for 30 steps beats chance on the held-out split
    assert float(res.test_accuracy[-1]) > 0.5
