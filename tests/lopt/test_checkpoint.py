"""Save / load of learned optimizers, including bad inputs."""

import json

import jax
import numpy as np
import pytest

import lopt


def test_save_load_round_trip_exact(tmp_path):
    theta = lopt.init_theta(jax.random.key(2), lopt.SP_LO)
    lopt.save(tmp_path / "ck", theta, lopt.SP_LO, meta={"note": "x"})
    back, config, meta = lopt.load_theta(tmp_path / "ck")
    assert config == lopt.LOConfig(mup=False, step_mult=1e-3) and meta == {"note": "x"}
    for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), b)
    # the loaded optimizer steps exactly as the saved theta does
    params = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)}
    grads = {"w": np.cos(params["w"] + 1.0)}

    def update(opt):
        return np.asarray(opt.update(grads, opt.init(params), params)[0]["w"])
    got = update(lopt.load(tmp_path / "ck"))
    np.testing.assert_array_equal(got, update(lopt.make_from_config(theta, lopt.SP_LO)))
    assert np.abs(got).max() > 0


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    with pytest.raises(lopt.CheckpointError, match="not found"):
        lopt.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(lopt.CheckpointError, match="no learned-optimizer checkpoint"):
        lopt.load(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "lopt.json").write_text('{"format": "mulo-lopt-v1", "con')
    with pytest.raises(lopt.CheckpointError, match="unreadable"):
        lopt.load(bad)
    # theta of another architecture
    other = lopt.LOConfig(hidden_size=8)
    lopt.save(tmp_path / "other", lopt.init_theta(jax.random.key(0), other), other)
    doc = json.loads((tmp_path / "other" / "lopt.json").read_text())
    doc["config"]["hidden_size"] = 32
    (tmp_path / "other" / "lopt.json").write_text(json.dumps(doc))
    with pytest.raises(lopt.CheckpointError, match="does not match"):
        lopt.load(tmp_path / "other")


def test_run_directory_falls_back_to_previous_step(tmp_path):
    theta = lopt.init_theta(jax.random.key(3))
    for step in (5, 10):
        d = tmp_path / "run" / "checkpoints" / str(step) / "lopt"
        d.mkdir(parents=True)
        (d / "metadata").write_text(json.dumps(lopt.io.checkpoint.to_json(theta, lopt.MULO)))
    (tmp_path / "run" / "checkpoints" / "10" / "lopt" / "metadata").write_text("garbage")
    with pytest.warns(UserWarning, match="using step 5"):
        back, _, _ = lopt.load_theta(tmp_path / "run")
    np.testing.assert_array_equal(back["nn"]["w0"], np.asarray(theta["nn"]["w0"]))
