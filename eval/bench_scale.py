"""Scale-out throughput: outer steps per second of a meta-training preset, measured in one
run for one process on one core, two processes on one core each (jax.distributed, gloo), and
one process with two devices on two cores (``python -m eval.bench --scale-out``).

Each configuration is the real entry point (``python -m meta_train``) in fresh processes
pinned with ``sched_setaffinity``; its rate is read from process 0's ``metrics.jsonl`` (the
time each outer step finished) after ``warmup`` steps, so compilation is excluded. The
figures are ratios of runs on the same machine in the same invocation; on a machine other
jobs share they say little on their own.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path, preset: str, steps: int, cores: list[set[int]], devices: int,
            timeout_s: float) -> None:
    """Runs one configuration: ``len(cores)`` processes, process ``i`` pinned to
    ``cores[i]``, each with ``devices`` host devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if "force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    cmd = [sys.executable, "-m", "meta_train", "--preset", preset, "--out", str(out),
           "--no-progress", "--outer_steps", str(steps), "--validate_every", "0",
           "--checkpoint_every", str(steps)]
    if len(cores) > 1:
        port = _free_port()
        cmds = [cmd + ["--coordinator", f"127.0.0.1:{port}", "--num-processes",
                       str(len(cores)), "--process-id", str(i)] for i in range(len(cores))]
    else:
        cmds = [cmd]
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda cs=cs: os.sched_setaffinity(0, cs))
             for c, cs in zip(cmds, cores)]
    errs = [p.communicate(timeout=timeout_s)[1] for p in procs]
    for p, e in zip(procs, errs):
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:6])} failed ({p.returncode}): "
                               + (e.strip().splitlines() or ["no output"])[-1])


def _rate(out: Path, warmup: int) -> float:
    """Outer steps per second after the first ``warmup`` steps (process 0's metrics)."""
    t = {d["step"]: d["time"] for d in map(json.loads,
                                            (out / "metrics.jsonl").read_text().splitlines())}
    last = max(t)
    return (last - warmup) / (t[last] - t[warmup])


def bench_scale_out(preset: str = "quick", steps: int = 10, warmup: int = 2,
                    cores: tuple[int, int] | None = None, timeout_s: float = 3600) -> dict:
    """Outer steps/s of ``preset`` in the three configurations, and their ratios.

    Args:
      preset: meta-training preset (its ``num_pairs`` must be even).
      steps: timed outer steps per configuration (after ``warmup`` untimed ones).
      warmup: outer steps left out of the timing (the first compiles).
      cores: the two CPU cores to pin to (default: the first two this process may use).

    Returns:
      {"preset", "steps", "cores", "one_process_one_core", "two_processes_one_core_each",
       "one_process_two_devices_two_cores", "two_processes_over_one", "two_devices_over_one"}
      (rates in outer steps/s).
    """
    if cores is None:
        avail = sorted(os.sched_getaffinity(0))
        if len(avail) < 2:
            raise ValueError(f"--scale-out needs two CPU cores, this process may use {avail}")
        cores = (avail[0], avail[1])
    a, b = cores
    configs = {"one_process_one_core": ([{a}], 1),
               "two_processes_one_core_each": ([{a}, {b}], 1),
               "one_process_two_devices_two_cores": ([{a, b}], 2)}
    res = {"preset": preset, "steps": steps, "cores": [a, b]}
    with tempfile.TemporaryDirectory(prefix="mulo-scale-") as tmp:
        for name, (cs, devices) in configs.items():
            out = Path(tmp) / name
            _launch(out, preset, warmup + steps, cs, devices, timeout_s)
            res[name] = _rate(out, warmup)
    one = res["one_process_one_core"]
    res["two_processes_over_one"] = res["two_processes_one_core_each"] / one
    res["two_devices_over_one"] = res["one_process_two_devices_two_cores"] / one
    return res


def print_scale_out(r: dict) -> None:
    print(f"scale-out, preset {r['preset']}, {r['steps']} timed outer steps, cores "
          f"{r['cores']}:")
    print(f"  1 process, 1 core:             {r['one_process_one_core']:.3f} outer steps/s")
    print(f"  2 processes, 1 core each:      {r['two_processes_one_core_each']:.3f} outer "
          f"steps/s ({r['two_processes_over_one']:.2f}x)")
    print(f"  1 process, 2 devices, 2 cores: {r['one_process_two_devices_two_cores']:.3f} "
          f"outer steps/s ({r['two_devices_over_one']:.2f}x)")
