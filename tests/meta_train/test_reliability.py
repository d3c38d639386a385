"""Faults a careful operator meets (issue 40's probe, the meta-training side), with the smoke
preset: two processes on one run directory, checkpoints that restore other numbers than
were written, a lost final lopt.json, runs a signal cannot stop, resumes of older or
extended runs, full disks and unwritable directories, and optimizer state that overflows."""

import dataclasses
import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from meta_train.checkpointing import Checkpointer, state_digest
from meta_train.cli import parse
from meta_train.config import PRESETS, apply_overrides, fill_config, override
from meta_train.loop import MetaTrainer, RunDirError, check_run_dir, resume_command, run
from meta_train.rundir import LOCK_FILE, hold

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, JAX_PLATFORMS="cpu")
SHORT = dataclasses.replace(PRESETS["smoke"], outer_steps=3, checkpoint_every=1,
                            validate_every=0)
OLD_RUN = ROOT / "tests" / "fixtures" / "run-v1"


def _theta_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _cli(*args, script=None, timeout=600):
    cmd = [sys.executable, "-m", "meta_train"] if script is None else \
        [sys.executable, "-c", textwrap.dedent(script)]
    return subprocess.run([*cmd, *map(str, args)], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def _lines(stderr):
    """stderr without Python's warning lines (each warning and the source line under it)."""
    out, skip = [], False
    for line in stderr.strip().splitlines():
        if "Warning:" in line:
            skip = True
            continue
        if skip and line.startswith("  "):
            continue
        skip = False
        out.append(line)
    return out


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted SHORT run (checkpoints 1, 2, 3): the reference of every resume."""
    out = tmp_path_factory.mktemp("full")
    return out, run(SHORT, out, progress=False)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(LOCK_FILE))
    return dst


# --- one process per run directory -----------------------------------------------------

_HOLD = """
import sys, time
from meta_train.rundir import hold
held = hold(sys.argv[1])
held.__enter__()
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_process_on_a_held_run_stops_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], cwd=ROOT, env=ENV,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        before = sorted(p.name for p in out.iterdir())
        r = _cli("--preset", "smoke", "--out", out, "--no-progress", "--seed", "1")
        assert r.returncode == 2, r.stderr[-2000:]
        lines = _lines(r.stderr)
        assert len(lines) == 1 and f"pid {child.pid}" in lines[0] and "in use" in lines[0], lines
        assert sorted(p.name for p in out.iterdir()) == before == [LOCK_FILE]   # untouched
        with pytest.raises(RunDirError, match=f"pid {child.pid}"):
            run(SHORT, out, progress=False)
    finally:
        child.kill()
        child.wait()
    with hold(out):     # the kernel dropped the killed holder's lock
        with hold(out):     # re-entrant within one process
            pass


@pytest.mark.slow   # 10-30 s: make test runs it, the fast tier does not
def test_the_lock_is_held_for_the_life_of_a_run(tmp_path, monkeypatch):
    from lopt.io.locks import is_held
    seen = []
    real = MetaTrainer.outer_step
    monkeypatch.setattr(MetaTrainer, "outer_step", lambda self, state: (
        seen.append(is_held(tmp_path / "run" / LOCK_FILE)), real(self, state))[1])
    cfg = dataclasses.replace(SHORT, outer_steps=2)
    run(cfg, tmp_path / "run", progress=False)
    assert seen == [True, True] and not is_held(tmp_path / "run" / LOCK_FILE)


def test_an_unwritable_out_is_one_line(tmp_path):
    f = tmp_path / "file"
    f.write_text("not a directory")
    r = _cli("--preset", "smoke", "--out", f, "--no-progress")
    assert r.returncode == 2
    assert _lines(r.stderr) == [f"error: --out {f} cannot hold a run: it is a file, not a "
                                "directory; choose another --out"]
    with pytest.raises(RunDirError, match="cannot hold a run"):
        run(SHORT, f / "sub", progress=False)
    # a directory that cannot be written (as root, chmod does not stop writes: /proc does)
    with pytest.raises(RunDirError, match="cannot hold a run"):
        with hold("/proc/mulo-no-such-dir/run"):
            pass


@pytest.mark.parametrize("value", ["0", "-3", "x"])
def test_stop_after_must_be_a_positive_count(value, capsys):
    with pytest.raises(SystemExit) as e:
        parse(["--preset", "smoke", "--stop-after", value])
    assert e.value.code == 2 and "--stop-after" in capsys.readouterr().err


# --- verified checkpoints -----------------------------------------------------------------

def test_a_checkpoint_whose_arrays_changed_on_disk_falls_back_and_is_rewritten(full_run,
                                                                             tmp_path):
    src, full = full_run
    out = _copy(src, tmp_path / "run")
    like = MetaTrainer(SHORT).init_state()
    ck = Checkpointer(out / "checkpoints")
    want = json.loads((out / "checkpoints" / "3" / "digest" / "metadata").read_text())["sha256"]
    assert state_digest(ck.restore(like)) == want
    ck.close()
    # one flipped byte in the largest data file. Where the flip lands inside zstd's literals
    # orbax reads it back without an error, as other numbers (the probe's silent restores);
    # elsewhere zstd reports corruption. Which offsets are which depends on the bytes written
    # (they differ between CPUs), so look for a silent one; either kind must fall back.
    data = out / "checkpoints" / "3" / "state" / "ocdbt.process_0" / "d"
    big = max(data.iterdir(), key=lambda p: p.stat().st_size)
    clean = big.read_bytes()
    silent, loud = None, None
    for k in range(1, 96):
        b = bytearray(clean)
        b[len(b) * k // 96] ^= 0x5A
        big.write_bytes(bytes(b))
        ck = Checkpointer(out / "checkpoints")
        try:
            if state_digest(ck._restore_arrays(3, like)) != want:   # what a restore used to take
                silent = bytes(b)
        except Exception:  # noqa: BLE001 - orbax re-raises tensorstore's errors untyped
            loud = loud or bytes(b)
        ck.close()
        if silent:
            break
    assert silent or loud, "no flipped byte changed what orbax reads back"
    big.write_bytes(silent or loud)
    assert big.read_bytes() != clean
    ck = Checkpointer(out / "checkpoints")
    why = r"sha256 mismatch" if silent else r"Error reading"
    with pytest.warns(UserWarning, match=r"resumed from step 2 .*" + why):
        assert int(ck.restore(like)["step"]) == 2
    ck.close()
    assert (out / "checkpoints" / "3.unusable").is_dir()
    res = run(SHORT, out, resume=True, progress=False)        # step 3 rewritten
    assert res["step"] == 3 and _theta_equal(res["theta"], full["theta"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ck = Checkpointer(out / "checkpoints")
        assert int(ck.restore(like)["step"]) == 3
        ck.close()


@pytest.mark.slow   # 10-30 s: make test runs it, the fast tier does not
def test_a_missing_manifest_falls_back_with_one_warning_and_no_tracebacks(full_run, tmp_path):
    src, _ = full_run
    out = _copy(src, tmp_path / "run")
    (out / "checkpoints" / "3" / "state" / "manifest.ocdbt").unlink()
    r = _cli("--out", out, "--resume", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "Event loop is closed" not in r.stderr, r.stderr
    assert r.stderr.count("resumed from step 2 instead") == 1


def test_lopt_json_carries_its_digest_and_a_damaged_final_one_is_rewritten_on_resume(
        full_run, tmp_path):
    src, full = full_run
    out = _copy(src, tmp_path / "run")
    final = out / "checkpoints" / "3" / "lopt.json"
    doc = json.loads(final.read_text())
    assert doc["sha256"] == lopt.io.checkpoint.doc_digest(doc)
    # a changed number that is still valid JSON: no longer loads as this step
    leaf = doc["theta"]["nn"][sorted(doc["theta"]["nn"])[0]]
    leaf["values"][0] += 0.5
    final.write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="does not match the sha256"):
        assert lopt.load_theta(out)[2]["step"] == 2
    # --resume of the finished run rewrites it (and a lost one), from the verified state
    for damage in ("changed", "lost"):
        if damage == "lost":
            final.unlink()
        with pytest.warns(UserWarning, match="rewrote its missing or damaged lopt.json"):
            res = run(SHORT, out, resume=True, progress=False)
        assert res["step"] == 3
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            theta, _, meta = lopt.load_theta(out)
        assert meta["step"] == 3 and _theta_equal(theta, full["theta"])
    # documents without a digest (shipped checkpoints, older runs) load unverified
    doc.pop("sha256")
    assert lopt.io.checkpoint.from_json(doc)[2]["step"] == 3


# --- bounds a run can honour, and a signal that ends a step in progress ------------------

@pytest.mark.parametrize("key,value", [("es.unroll_length", "100000000"),
                                       ("es.max_horizon", "1000000000"),
                                       ("es.num_pairs", "100000"),
                                       ("validate_steps", "100000000")])
def test_sizes_beyond_the_stated_limits_are_refused_before_anything_runs(key, value, tmp_path):
    with pytest.raises(ValueError, match=rf"{key.replace('.', '[.]')} must be <= \d+"):
        override(PRESETS["smoke"], key, value)
    if key == "es.unroll_length":
        r = _cli("--preset", "smoke", f"--{key}", value, "--out", tmp_path / "never")
        assert r.returncode == 2 and not (tmp_path / "never").exists()
        assert r.stderr.strip().splitlines()[-1].endswith(
            f"error: es.unroll_length must be <= 10000, got {value} (meta_train.config.LIMITS: "
            "the most one run is built to take)")


# The child's outer step 2 runs a jitted loop of ~forever first: a computation that holds
# its thread until it ends, where a signal handler never gets to run (as a huge truncation).
_ENDLESS_STEP_2 = """
import sys, jax, jax.numpy as jnp
from meta_train.loop import MetaTrainer
spin = jax.jit(lambda n: jax.lax.while_loop(   # ~1 us an iteration: about an hour
    lambda c: c[0] < n, lambda c: (c[0] + 1, jnp.sin(c[1]) + 1e-3),
    (0, jnp.ones(4096, jnp.float32)))[1])
real = MetaTrainer.outer_step
def outer_step(self, state):
    if int(state["step"]) == 2:
        print("spinning", file=sys.stderr, flush=True)
        spin(2_000_000_000).block_until_ready()
    return real(self, state)
MetaTrainer.outer_step = outer_step
from meta_train.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigterm_abandons_a_step_in_progress_and_resume_is_exact(full_run, tmp_path):
    _, full = full_run
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", _ENDLESS_STEP_2, "--preset", "smoke", "--out", str(out),
         "--no-progress", "--outer_steps", "3", "--checkpoint_every", "1",
         "--validate_every", "0"], cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True)
    err = []
    for line in proc.stderr:
        err.append(line)
        if line.strip() == "spinning":
            break
    time.sleep(1.0)
    assert proc.poll() is None, "".join(err)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    took = time.time() - t0
    assert proc.returncode == 128 + signal.SIGTERM, "".join(err) + rest
    assert took < 60, took      # not the minutes the loop would take
    hint = rest.strip().splitlines()[-1].split("continue with: ", 1)[1]
    assert hint == f"python -m meta_train --out {shlex.quote(str(out))} --resume"
    steps = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [1, 2]      # the abandoned step 3 was never saved
    r = _cli(*shlex.split(hint)[3:], "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    theta, _, meta = lopt.load_theta(out)
    assert meta["step"] == 3 and _theta_equal(theta, full["theta"])


# --- resume compares like with like; every hint works ------------------------------------

def test_a_first_release_run_resumes_and_extends(tmp_path):
    run_dir = _copy(OLD_RUN, tmp_path / "run")
    saved = json.loads((run_dir / "config.json").read_text())
    # the first release's config: none of the fields added since
    assert "init_from" not in saved and "loss_weight" not in saved["es"]
    assert "mup_base" not in saved["lo"] and "horizon_power" not in saved["lo"]
    args, cfg = parse(["--out", str(run_dir), "--resume"])
    assert fill_config(saved) == cfg.to_dict()
    base = cfg
    smoke = apply_overrides(PRESETS["smoke"], [("outer_steps", "2"), ("validate_every", "0")])
    assert check_run_dir(smoke, run_dir, resume=True) == []     # the same run, like with like
    with pytest.raises(RunDirError, match="es.num_pairs: 2 in the run, 4 requested"):
        check_run_dir(override(smoke, "es.num_pairs", "4"), run_dir, resume=True)
    res = run(cfg, run_dir, resume=True, progress=False)
    assert res["step"] == 2
    # `--out RUN --resume --outer_steps 3`: the run's own config with the override, extended
    args, cfg = parse(["--out", str(run_dir), "--resume", "--outer_steps", "3"])
    assert cfg == dataclasses.replace(base, outer_steps=3)
    assert check_run_dir(cfg, run_dir, resume=True) == [
        "outer_steps: 2 in the run, 3 requested"]
    res = run(cfg, run_dir, resume=True, progress=False)
    assert res["step"] == 3 and lopt.load_theta(run_dir)[2]["step"] == 3
    assert json.loads((run_dir / "config.json").read_text())["outer_steps"] == 3
    with pytest.raises(RunDirError, match="past outer_steps=2; pass --outer_steps 3"):
        run(dataclasses.replace(cfg, outer_steps=2), run_dir, resume=True, progress=False)


def test_a_run_whose_config_files_are_all_lost_resumes_from_its_lopt_json(full_run, tmp_path):
    src, full = full_run
    out = _copy(src, tmp_path / "run")
    for f in [out / "config.json", *(out / "checkpoints").glob("*/config.json")]:
        f.unlink()
    shutil.rmtree(out / "checkpoints" / "3")
    args, cfg = parse(["--out", str(out), "--resume"])
    assert args.resume and cfg == SHORT
    res = run(cfg, out, resume=True, progress=False)
    assert res["step"] == 3 and _theta_equal(res["theta"], full["theta"])


@pytest.mark.slow   # 10-30 s: make test runs it, the fast tier does not
def test_the_hint_of_a_run_stopped_before_its_config_was_saved_works(tmp_path):
    out = tmp_path / "run"
    argv = ["--preset", "smoke", "--out", str(out), "--no-progress", "--outer_steps", "2",
            "--validate_every", "0"]
    _, cfg = parse(argv)
    hint = resume_command(out, cfg, argv)       # nothing saved: the invocation, resumable
    assert hint == ("python -m meta_train " + " ".join(map(shlex.quote, argv))
                    + " --resume-or-start")
    assert parse(shlex.split(hint)[3:])[1] == cfg
    # a SIGINT while the invocation is recorded (before run() writes config.json)
    r = _cli(*argv, script="""
        import sys
        import meta_train.cli as C
        def stop(out, argv):
            raise KeyboardInterrupt
        C._record_invocation = stop
        sys.exit(C.main(sys.argv[1:]))
        """)
    assert r.returncode == 130 and not (out / "config.json").exists(), r.stderr[-2000:]
    printed = r.stderr.strip().splitlines()[-1].split("continue with: ", 1)[1]
    assert printed == hint
    r = _cli(*shlex.split(printed)[3:])
    assert r.returncode == 0 and "done: step 2" in r.stdout, r.stderr[-2000:]
    # once the run has its config, the short form
    assert resume_command(out, cfg, argv) == \
        f"python -m meta_train --out {shlex.quote(str(out))} --resume"


# --- full disks -----------------------------------------------------------------------------

def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_during_lopt_json_leaves_no_temp_file_and_resume_repairs(full_run,
                                                                             tmp_path,
                                                                             monkeypatch):
    _, full = full_run
    out = tmp_path / "run"
    import types
    import lopt.io.checkpoint as C
    full_disk = types.SimpleNamespace(**vars(json))    # json, whose dump fails at step 2
    full_disk.dump = lambda doc, f, **k: (
        _enospc() if "theta" in doc and doc["meta"]["step"] == 2 else json.dump(doc, f, **k))
    monkeypatch.setattr(C, "json", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run(SHORT, out, progress=False)
    monkeypatch.setattr(C, "json", json)
    step = out / "checkpoints" / "2"
    assert not list(step.glob(".*tmp")) and not (step / "lopt.json").exists()
    with pytest.warns(UserWarning, match="rewrote its missing or damaged lopt.json"):
        res = run(SHORT, out, resume=True, progress=False)
    assert res["step"] == 3 and _theta_equal(res["theta"], full["theta"])
    assert lopt.load_theta(step)[2]["step"] == 2


_FULL_DISK = """
import os, sys
import orbax.checkpoint as ocp
real = ocp.CheckpointManager.save
def save(self, step, *a, **k):
    if step == 2:
        os.makedirs(os.path.join(str(self.directory), "2.orbax-checkpoint-tmp-1"), exist_ok=True)
        raise ValueError('RESOURCE_EXHAUSTED: Error writing "theta.nn.w0/0.0" in OCDBT database '
                         '(as tensorstore words it): Failed to write 15171 bytes to file 15: No '
                         "space left on device [os_error_code='28']")
    return real(self, step, *a, **k)
ocp.CheckpointManager.save = save
from meta_train.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow   # 10-30 s: make test runs it, the fast tier does not
def test_a_full_disk_during_a_checkpoint_is_one_line_with_a_resume_hint(full_run, tmp_path):
    _, full = full_run
    out = tmp_path / "run"
    r = _cli("--preset", "smoke", "--out", out, "--no-progress", "--outer_steps", "3",
             "--checkpoint_every", "1", "--validate_every", "0", script=_FULL_DISK)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    last = _lines(r.stderr)[-1]
    assert last.startswith("error: cannot write the run (No space left on device"), last
    hint = last.split("continue with: ", 1)[1]
    assert hint == f"python -m meta_train --out {shlex.quote(str(out))} --resume"
    assert not list((out / "checkpoints").glob("*tmp*"))    # nothing half-written left
    res = run(SHORT, out, resume=True, progress=False)
    assert res["step"] == 3 and _theta_equal(res["theta"], full["theta"])


# --- the inner loop's divergence guard ------------------------------------------------------

def test_optimizer_state_that_overflows_counts_as_divergence():
    from meta_train.inner import train
    from meta_train.tasks import get_task
    task = get_task("mlp-digits8-w16-d2")

    def overflowing(growth):
        # a state that grows by `growth` per step and takes tiny finite steps: at 1e30 it
        # overflows float32 at step 2 while the parameters stay finite
        def init(params):
            return {"acc": jnp.ones((), jnp.float32), "count": jnp.int32(0)}

        def update(g, state, params=None):
            acc = state["acc"] * growth
            upd = jax.tree.map(lambda x: -1e-3 * x / (1.0 + jnp.minimum(acc, 1e3)), g)
            return upd, {"acc": acc, "count": state["count"] + 1}
        return optax.GradientTransformation(init, update)

    res = jax.jit(lambda k: train(task, overflowing(1e30), key=k, num_steps=6))(
        jax.random.key(0))
    assert bool(res.diverged) and int(res.diverged_at) == 1
    assert np.isinf(np.asarray(res.losses[2:])).all() and np.isfinite(res.losses[:2]).all()
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(res.params))
    # a state that starts at inf on purpose (a best-so-far) is no overflow
    best = optax.GradientTransformation(
        lambda p: jnp.full((), jnp.inf), lambda g, s, p=None: (
            jax.tree.map(lambda x: -1e-2 * x, g), s))
    res = jax.jit(lambda k: train(task, best, key=k, num_steps=6))(jax.random.key(0))
    assert not bool(res.diverged)
