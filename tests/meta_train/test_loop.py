"""End to end: the smoke preset, checkpoints, TensorBoard, exact resume, corrupt fallback,
and the sharded estimator on 4 host devices."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import lopt
from meta_train.checkpointing import Checkpointer
from meta_train.config import PRESETS, override
from meta_train.loop import MetaTrainer, RunDirError, run

SMOKE = dataclasses.replace(PRESETS["smoke"], checkpoint_every=1, validate_every=3)
ROOT = Path(__file__).resolve().parents[2]


def _theta_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    res = run(SMOKE, out, progress=False)
    return out, res


def test_smoke_run_writes_checkpoint_and_tensorboard(smoke_run):
    out, res = smoke_run
    assert res["step"] == SMOKE.outer_steps
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(res["theta"]))
    theta, config, meta = lopt.load_theta(out)
    assert meta["step"] == SMOKE.outer_steps and config.mup
    assert _theta_equal(theta, res["theta"])
    ea = EventAccumulator(str(out / "tb"))
    ea.Reload()
    tags = ea.Tags()["scalars"]
    assert {"meta_loss", "grad_norm", "theta_norm", "val/meta_loss"} <= set(tags)
    assert len(ea.Scalars("meta_loss")) == SMOKE.outer_steps
    assert np.isfinite([e.value for e in ea.Scalars("meta_loss")]).all()
    assert json.loads((out / "config.json").read_text())["tasks"] == list(SMOKE.tasks)
    # the checkpoint is usable directly as an optimizer
    params = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)}
    grads = {"w": np.cos(params["w"] + 1.0)}

    def update(opt):
        return np.asarray(opt.update(grads, opt.init(params), params)[0]["w"])
    got = update(lopt.load(out))
    np.testing.assert_array_equal(got, update(lopt.make_from_config(res["theta"], config)))
    assert np.all(np.isfinite(got)) and np.abs(got).max() > 0


# The child kills itself with SIGKILL at a fixed point (mid outer step 4, after step 3's
# checkpoint), so the test does not depend on how fast this machine runs.
_KILL_AT_STEP_4 = """
import os, signal, sys
from meta_train.loop import MetaTrainer
real = MetaTrainer.outer_step
def outer_step(self, state):
    if int(state["step"]) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, state)
MetaTrainer.outer_step = outer_step
from meta_train.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_sigkill_is_bitwise_exact(smoke_run, tmp_path):
    _, full = smoke_run
    out = tmp_path / "killed"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_AT_STEP_4, "--preset", "smoke", "--out", str(out),
         "--no-progress", "--checkpoint_every", "1", "--validate_every", "3"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ck = out / "checkpoints"
    assert sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit()) == [1, 2, 3]
    res = run(SMOKE, out, resume=True, progress=False)
    assert res["step"] == SMOKE.outer_steps
    assert _theta_equal(res["theta"], full["theta"])


def test_corrupt_latest_checkpoint_falls_back_with_warning(smoke_run, tmp_path):
    src, _ = smoke_run                        # a copy of the smoke run: checkpoints 4, 5, 6
    shutil.copytree(src, tmp_path / "run")
    latest = tmp_path / "run" / "checkpoints" / str(SMOKE.outer_steps) / "state"
    for f in latest.rglob("*"):
        if f.is_file():
            f.write_bytes(b"\x00garbage")
    trainer = MetaTrainer(SMOKE)
    ck = Checkpointer(tmp_path / "run" / "checkpoints")
    with pytest.warns(UserWarning, match=f"resumed from step {SMOKE.outer_steps - 1}"):
        state = ck.restore(trainer.init_state())
    ck.close()
    assert int(state["step"]) == SMOKE.outer_steps - 1


def test_existing_run_needs_resume_flag(smoke_run):
    out, _ = smoke_run
    with pytest.raises(RunDirError, match="--resume"):
        run(SMOKE, out, progress=False)


def test_cli_overrides_and_errors():
    cfg = override(PRESETS["quick"], "es.num_pairs", "16")
    assert cfg.es.num_pairs == 16
    assert override(cfg, "lo.mup", "false").lo.mup is False
    assert override(cfg, "tasks", "a,b").tasks == ("a", "b")
    with pytest.raises(ValueError, match="unknown option"):
        override(cfg, "es.nope", "1")
    r = subprocess.run([sys.executable, "-m", "meta_train", "--preset", "smoke",
                        "--tasks", "mlp-nope", "--out", "/tmp/never"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: unknown task")


_SHARD_SCRIPT = """
import json, sys, jax, numpy as np, lopt
from meta_train import es as ES, tasks
task = tasks.get_task("mlp-digits8-w16-d2")
cfg = ES.ESConfig(num_pairs=4, unroll_length=4, min_horizon=6, max_horizon=12)
prob = ES.lo_problem(task, lambda th: lopt.make(th))
theta = lopt.init_theta(jax.random.PRNGKey(0))
st = ES.init_es_state(prob, theta, jax.random.PRNGKey(1), cfg)
for i in range(3):
    g, st, m = ES.es_gradient(theta, st, jax.random.PRNGKey(5 + i), task.data, problem=prob, cfg=cfg)
flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])
print(json.dumps({"devices": len(st.xi.sharding.device_set), "grad": flat.tolist()}))
"""


@pytest.mark.slow
def test_sharded_estimate_equals_single_device():
    outs = {}
    for n in (1, 4):
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        r = subprocess.run([sys.executable, "-c", _SHARD_SCRIPT], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        outs[n] = json.loads(r.stdout.strip().splitlines()[-1])
    assert outs[1]["devices"] == 1 and outs[4]["devices"] == 4
    g1, g4 = np.array(outs[1]["grad"]), np.array(outs[4]["grad"])
    assert np.linalg.norm(g1) > 0
    # The estimate divides float32 loss differences (~1e-4) by 2 sigma^2: a different
    # reduction order across devices moves each entry by ~1e-7 / 2e-4 relative to the largest.
    np.testing.assert_allclose(g4, g1, rtol=0, atol=1e-3 * np.abs(g1).max())
    assert g4 @ g1 / np.linalg.norm(g4) / np.linalg.norm(g1) > 0.99999


def test_an_sp_twin_drops_the_base_widths_step_scale():
    """A μP base width's step_mult (1e-2 / 64) compensates for the b/fan_in hidden steps SP
    never takes; the SP twin of such a preset is the classic SP LO (step_mult 1e-3)."""
    for name in ("quick", "cpu-base"):
        mu, sp = PRESETS[name].lo, PRESETS[f"{name}-sp"].lo
        assert mu.mup and mu.mup_base == 512.0 and mu.resolved_step_mult == 1.5625e-4
        assert not sp.mup and sp.resolved_step_mult == 1e-3
        assert (sp.mup_base, sp.depth_ref) == (1.0, 0)
    # presets without a base width keep their twin's constants as they were
    assert PRESETS["cpu-sp"].lo == dataclasses.replace(PRESETS["cpu"].lo, mup=False)


def test_start_only_writes_the_theta_a_run_starts_from_and_never_over_a_run(tmp_path, capsys):
    from meta_train.cli import main
    assert main(["--preset", "smoke", "--out", str(tmp_path / "s"), "--start-only"]) == 0
    theta, config, meta = lopt.load_theta(tmp_path / "s")
    want = MetaTrainer(PRESETS["smoke"]).init_state()["theta"]
    assert meta["step"] == 0 and meta["config"] == PRESETS["smoke"].to_dict()
    assert config.to_dict() == PRESETS["smoke"].lo.to_dict()
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(theta)):
        np.testing.assert_array_equal(np.asarray(a), b)
    # a compact LO started from its hand-set Adam direction, with an override
    assert main(["--preset", "compact-cpu", "--lo.orthogonalize", "true",
                 "--out", str(tmp_path / "c"), "--start-only"]) == 0
    theta, config, _ = lopt.load_theta(tmp_path / "c")
    assert config.orthogonalize and config.features == "compact"
    for a, b in zip(jax.tree.leaves(lopt.adam_theta(config)), jax.tree.leaves(theta)):
        np.testing.assert_array_equal(np.asarray(a), b)
    # never over anything: a second call, or a run directory, is one error line
    capsys.readouterr()
    assert main(["--preset", "smoke", "--out", str(tmp_path / "s"), "--start-only"]) == 2
    assert "not empty" in capsys.readouterr().err


@pytest.mark.slow   # one compile of the smoke step, ~20 s
def test_the_meta_training_step_compiles_once_per_run():
    # after a step theta sits on the population mesh; unless the first step's theta does too,
    # every run compiles its step twice (14 s of the smoke run's 44 s)
    from meta_train import es as ES
    es = dataclasses.replace(SMOKE.es, sigma=0.0123)     # a step no other test compiled
    trainer = MetaTrainer(dataclasses.replace(SMOKE, es=es))
    state = trainer.init_state()
    before = ES.es_gradient._cache_size()
    for _ in range(3):
        state, mets = trainer.outer_step(state)
    assert ES.es_gradient._cache_size() - before == 1
    assert np.isfinite(mets["meta_loss"]) and int(state["step"]) == 3


@pytest.mark.parametrize("balance", ["mean", "norm"])
def test_task_balance_norm_gives_every_tasks_estimate_the_same_weight(monkeypatch, balance):
    # two tasks whose estimates differ 4x in norm: "mean" lets the larger one steer, "norm"
    # rescales each to the mean norm (2.5) first, so both directions count equally
    from meta_train import es as ES
    cfg = dataclasses.replace(SMOKE, tasks=("mlp-fmnist8-w8-d2", "mlp-fmnist8-w16-d2"),
                              task_balance=balance)
    trainer = MetaTrainer(cfg)
    state = trainer.init_state()
    from jax.flatten_util import ravel_pytree
    flat, unravel = ravel_pytree(state["theta"])
    rng = np.random.default_rng(0)
    u, v = (x / np.linalg.norm(x) for x in rng.normal(size=(2, flat.size)))
    estimates = iter([u, 4.0 * v])

    def fake(theta, es_state, key, data, problem, cfg):
        return unravel(np.asarray(next(estimates), flat.dtype)), es_state, {"meta_loss": 1.0}

    monkeypatch.setattr(ES, "es_gradient", fake)
    seen = {}
    trainer._apply = lambda th, st, g: (seen.setdefault("g", g), (th, st, True))[1]
    _, mets = trainer.outer_step(state)
    want = {"mean": (u + 4.0 * v) / 2, "norm": (2.5 * u + 2.5 * v) / 2}[balance]
    np.testing.assert_allclose(np.asarray(ravel_pytree(seen["g"])[0]), want, atol=1e-6)
    assert mets["mlp-fmnist8-w8-d2/grad_norm"] == pytest.approx(1.0, rel=1e-5)
    assert mets["mlp-fmnist8-w16-d2/grad_norm"] == pytest.approx(4.0, rel=1e-5)
    with pytest.raises(ValueError, match="task_balance must be 'mean' or 'norm'"):
        dataclasses.replace(cfg, task_balance="sum")
