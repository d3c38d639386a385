"""Fault injection with the smoke preset: signals, runs that are not there, damaged
checkpoints, resumes with the wrong options, and config values the run cannot use."""

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import lopt
from meta_train.checkpointing import Checkpointer
from meta_train.cli import parse
from meta_train.config import PRESETS, MetaTrainConfig, apply_overrides, override
from meta_train.loop import RunDirError, check_run_dir, run

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, JAX_PLATFORMS="cpu")
SHORT = dataclasses.replace(PRESETS["smoke"], outer_steps=3, checkpoint_every=1,
                            validate_every=0)


def _theta_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "meta_train", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("short")
    return out, run(SHORT, out, progress=False)


@pytest.mark.slow
def test_sigterm_saves_prints_resume_command_and_resume_is_exact(tmp_path):
    cfg = dataclasses.replace(PRESETS["smoke"], outer_steps=12, checkpoint_every=100,
                              validate_every=0)
    full = run(cfg, tmp_path / "full", progress=False)
    out = tmp_path / "termed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "meta_train", "--preset", "smoke", "--out", str(out),
         "--no-progress", "--outer_steps=12", "--checkpoint_every", "100",
         "--validate_every", "0"],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the signal"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    # the only checkpoint is the one the signal saved (checkpoint_every 100)
    steps = [int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(steps) == 1 and 2 <= steps[0] < 12, steps
    cmd = err.strip().splitlines()[-1].split("continue with: ", 1)[1]
    assert cmd == f"python -m meta_train --out {shlex.quote(str(out))} --resume"
    r = _cli(*shlex.split(cmd)[3:], "--no-progress")   # the printed command, as given
    assert r.returncode == 0, r.stderr[-2000:]
    theta, _, meta = lopt.load_theta(out)
    assert meta["step"] == 12 and _theta_equal(theta, full["theta"])
    assert [json.loads(l)["step"] for l in metrics.read_text().splitlines()] == \
        list(range(1, 13))


def test_resume_of_no_run_fails_in_one_line(tmp_path):
    missing = tmp_path / "misspelled"
    r = _cli("--out", str(missing), "--resume")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: {missing} holds no run to resume (no config.json or checkpoint); check "
        "--out, or drop --resume to start a new run"]
    r = _cli("--preset", "smoke", "--out", str(missing), "--resume")
    assert r.returncode == 2 and "holds no run to resume" in r.stderr.strip().splitlines()[-1]
    with pytest.raises(RunDirError, match="holds no run"):
        run(SHORT, missing, resume=True, progress=False)
    assert not missing.exists()
    # --resume-or-start starts one
    args, cfg = parse(["--preset", "smoke", "--out", str(missing), "--resume-or-start"])
    assert not args.resume and cfg == PRESETS["smoke"]


def test_damaged_newest_checkpoint_falls_back_and_is_rewritten(short_run, tmp_path):
    src, full = short_run
    out = tmp_path / "run"
    run(SHORT, out, progress=False)
    newest = out / "checkpoints" / "3"
    (newest / "lopt.json").write_bytes(b"\xff\xfe\x00not utf-8")
    with pytest.warns(UserWarning, match="using step 2"):
        _, _, meta = lopt.load_theta(out)
    assert meta["step"] == 2
    for f in (newest / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\x00garbage")
    with pytest.warns(UserWarning, match="resumed from step 2"):
        res = run(SHORT, out, resume=True, progress=False)
    assert res["step"] == 3 and _theta_equal(res["theta"], full["theta"])
    assert (out / "checkpoints" / "3.unusable").is_dir()
    # healed: step 3 restores and loads without a warning
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ck = Checkpointer(out / "checkpoints")
        from meta_train.loop import MetaTrainer
        state = ck.restore(MetaTrainer(SHORT).init_state())
        ck.close()
        theta, _, meta = lopt.load_theta(out)
    assert int(state["step"]) == 3 and meta["step"] == 3
    assert _theta_equal(theta, full["theta"])


def test_resume_with_other_options_names_fields_and_writes_nothing(short_run, tmp_path):
    src, _ = short_run
    other = override(SHORT, "es.num_pairs", "4")
    with pytest.raises(RunDirError) as e:
        check_run_dir(other, src, resume=True)
    msg = str(e.value)
    assert "es.num_pairs: 2 in the run, 4 requested" in msg
    assert f"resume with: python -m meta_train --out {src} --resume" in msg
    # without config.json, the checkpoint's config is checked, before anything is written
    out = tmp_path / "noconfig"
    run(SHORT, out, progress=False)
    (out / "config.json").unlink()
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    with pytest.raises(RunDirError, match="lo.hidden_size"):
        run(override(SHORT, "lo.hidden_size", "16"), out, resume=True, progress=False)
    assert not (out / "config.json").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
    # `--out RUN --resume` takes the run's own config
    args, cfg = parse(["--out", str(out), "--resume"])
    assert args.resume and cfg == SHORT


def test_resume_of_a_finished_run_prints_no_nan_meta_loss(short_run, tmp_path):
    """Nothing is left to run, so there is no meta-loss to show: the done line says so
    instead of printing ``meta-loss nan`` (the probe's A09 and B23)."""
    src, _ = short_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    r = _cli("--out", str(out), "--resume", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == (
        f"done: step 3 (no step left to run); checkpoint in {out}/checkpoints (load with "
        f"lopt.load({str(out)!r}))")
    r = _cli("--out", str(out), "--resume", "--no-progress", "--outer_steps", "4")
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r"^done: step 4, meta-loss \d+\.\d{4}; ", r.stdout, re.M), r.stdout


@pytest.mark.parametrize("key,value,field", [
    ("es.method", "bogus", "es.method"), ("es.method", "PES", "es.method"),
    ("es.num_pairs", "0", "es.num_pairs"), ("es.sigma", "0", "es.sigma"),
    ("es.sigma", "nan", "es.sigma"), ("es.unroll_length", "0", "es.unroll_length"),
    ("es.min_horizon", "0", "es.min_horizon"), ("es.max_horizon", "5", "es.max_horizon"),
    ("checkpoint_every", "0", "checkpoint_every"), ("outer_steps", "0", "outer_steps"),
    ("meta_lr", "-1", "meta_lr"), ("validate_seeds", "0", "validate_seeds"),
    ("tasks", "", "tasks"), ("es", "1", "es"),
])
def test_bad_config_values_are_refused(key, value, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        override(PRESETS["smoke"], key, value)


def test_config_types_and_cli_forms():
    d = PRESETS["smoke"].to_dict()
    d["es"]["num_pairs"] = "8"
    with pytest.raises(ValueError, match="es.num_pairs must be of type int"):
        MetaTrainConfig.from_dict(d)
    d = PRESETS["smoke"].to_dict()
    d["checkpoint_every"] = True
    with pytest.raises(ValueError, match="checkpoint_every"):
        MetaTrainConfig.from_dict(d)
    # overrides are validated together: the order of min/max horizon does not matter
    cfg = apply_overrides(PRESETS["smoke"], [("es.min_horizon", "500"),
                                             ("es.max_horizon", "600")])
    assert (cfg.es.min_horizon, cfg.es.max_horizon) == (500, 600)
    _, cfg = parse(["--preset", "smoke", "--es.num_pairs=4", "--es.sigma", "0.02"])
    assert cfg.es.num_pairs == 4 and cfg.es.sigma == 0.02
    r = _cli("--preset", "smoke", "--es.sigma", "0", "--out", "/nonexistent/never")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].endswith(
        "error: es.sigma must be a finite number > 0, got 0.0")
