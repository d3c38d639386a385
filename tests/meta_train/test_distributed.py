"""Multi-process meta-training on jax.distributed: two processes on this machine (gloo CPU
collectives), the commands of docs/scale-out.md."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import lopt

ROOT = Path(__file__).resolve().parents[2]
# A short smoke run that checkpoints every step (the kill test resumes from step 2).
FLAGS = ["--preset", "smoke", "--no-progress", "--outer_steps", "4", "--checkpoint_every", "1",
         "--validate_every", "0"]
# One device per process; the reference single process forces two host devices.
ENV = dict(os.environ, JAX_PLATFORMS="cpu")
ENV["XLA_FLAGS"] = " ".join(f for f in ENV.get("XLA_FLAGS", "").split()
                            if "force_host_platform_device_count" not in f)

# Process 1 kills itself with SIGKILL when it starts outer step 3 (after step 2's
# checkpoint), so the test does not depend on how fast this machine runs.
_KILL_PROCESS_1_AT_STEP_3 = """
import os, signal, sys, jax
from meta_train.loop import MetaTrainer
real = MetaTrainer.outer_step
def outer_step(self, state):
    if int(state["step"]) == 2 and jax.process_index() == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, state)
MetaTrainer.outer_step = outer_step
from meta_train.cli import main
sys.exit(main(sys.argv[1:]))
"""

# Process 1 sends itself SIGTERM as it starts outer step 3 (a signal to one process of a run).
_SIGTERM_PROCESS_1_AT_STEP_3 = _KILL_PROCESS_1_AT_STEP_3.replace("SIGKILL", "SIGTERM")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(out, *extra, script=None, own=([], [])):
    """The two processes of a localhost run (docs/scale-out.md), started in the background;
    ``own[i]``: arguments of process ``i`` only."""
    port = _free_port()
    head = [sys.executable, "-c", script] if script else [sys.executable, "-m", "meta_train"]
    return [subprocess.Popen(
        head + [*FLAGS, "--out", str(out), *extra, *own[i], "--coordinator",
                f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]


def _finish(procs, timeout=900):
    outs = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, o, e) for p, (o, e) in zip(procs, outs)]


def _theta(out):
    return jax.tree.leaves(lopt.load_theta(str(out))[0])


def _bitwise_equal(a, b):
    return len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                    for x, y in zip(a, b))


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pair") / "run"
    res = _finish(_start(out))
    assert [r[0] for r in res] == [0, 0], res[0][2][-3000:] + res[1][2][-3000:]
    return out, res


@pytest.mark.slow
def test_two_processes_give_the_meta_parameters_of_one_process_with_two_devices(
        pair_run, tmp_path):
    out, res = pair_run
    env = dict(ENV, XLA_FLAGS=ENV["XLA_FLAGS"] + " --xla_force_host_platform_device_count=2")
    r = subprocess.run([sys.executable, "-m", "meta_train", *FLAGS, "--out",
                        str(tmp_path / "one")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    # The same SPMD program on the same 2-device mesh: each device reduces its own pairs and
    # the cross-device sum adds two partial sums, which is exact in either order, so the
    # result is bitwise equal (no tolerance needed).
    assert _bitwise_equal(_theta(out), _theta(tmp_path / "one"))
    # process 0 alone wrote the run directory (the smoke preset keeps 3 checkpoints); both
    # processes finished the run
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["2", "3", "4"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    assert all("done: step 4" in o for _, o, _ in res)
    # the whole checkpoint (estimator states included) is the one-process run's, and it
    # restores in one process: a run may continue with another number of processes
    from meta_train.checkpointing import Checkpointer
    from meta_train.loop import MetaTrainer, load_run_config
    like = MetaTrainer(load_run_config(out)).init_state()
    states = []
    for run_dir in (out, tmp_path / "one"):
        ck = Checkpointer(run_dir / "checkpoints")
        states.append(jax.tree.leaves(ck.restore(like)))
        ck.close()
    assert len(states[0]) > 50 and _bitwise_equal(*states)


@pytest.mark.slow
def test_a_killed_process_stops_the_other_with_its_name_and_resume_loses_nothing(
        pair_run, tmp_path):
    full, _ = pair_run
    out = tmp_path / "killed"
    p0, p1 = _start(out, script=_KILL_PROCESS_1_AT_STEP_3)
    _, err1 = p1.communicate(timeout=900)
    assert p1.returncode == -signal.SIGKILL, err1[-3000:]
    died = time.monotonic()
    try:
        _, err0 = p0.communicate(timeout=60)   # the bound the docs promise
    except subprocess.TimeoutExpired:
        p0.kill()
        pytest.fail("process 0 still ran 60 s after process 1 died")
    assert time.monotonic() - died < 60
    assert p0.returncode != 0
    last = err0.strip().splitlines()[-1]
    assert last.startswith("error: lost process 1 of 2"), err0[-3000:]
    assert "--resume" in last
    # the checkpoints of the steps before the kill are complete
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["1", "2"]
    res = _finish(_start(out, "--resume"))
    assert [r[0] for r in res] == [0, 0], res[0][2][-3000:] + res[1][2][-3000:]
    assert "resumed from step 2" in res[0][2]
    assert _bitwise_equal(_theta(out), _theta(full))
    steps = [int(line.split(",")[0].split(":")[1])
             for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_signal_to_one_process_stops_every_process_after_the_step_with_a_checkpoint(
        pair_run, tmp_path):
    full, _ = pair_run
    out = tmp_path / "termed"
    res = _finish(_start(out, script=_SIGTERM_PROCESS_1_AT_STEP_3))
    assert [r[0] for r in res] == [128 + signal.SIGTERM] * 2, res[0][2][-3000:]
    assert all("continue with:" in e.strip().splitlines()[-1] for _, _, e in res)
    # both finished step 3, the one the signal arrived in, and process 0 checkpointed it
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["1", "2", "3"]
    res = _finish(_start(out, "--resume"))
    assert [r[0] for r in res] == [0, 0], res[0][2][-3000:] + res[1][2][-3000:]
    assert "resumed from step 3" in res[0][2]
    assert _bitwise_equal(_theta(out), _theta(full))


def test_processes_started_with_different_configs_stop_with_one_line(tmp_path):
    res = _finish(_start(tmp_path / "run", own=[[], ["--seed", "7"]]), timeout=300)
    for code, _, err in res:
        assert code == 2, err[-3000:]
        assert err.strip().splitlines()[-1] == (
            "error: process(es) 1 run another config than process 0; start every process "
            "with the same command")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_bad_process_id_is_one_error_line():
    r = subprocess.run([sys.executable, "-m", "meta_train", "--preset", "smoke", "--out",
                        "/tmp/never", "--coordinator", f"127.0.0.1:{_free_port()}",
                        "--num-processes", "2", "--process-id", "5"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: cannot start the distributed run (process_id")
    assert "--process-id" in lines[-1]
    assert not Path("/tmp/never").exists()
