"""Helpers of the fault probe (probe.py): running the CLIs, killing them at chosen moments,
and the checks every case shares (one-line errors, working hints, bitwise theta)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
# the smoke run every reference and resume is compared with (docs/fault-probe.md: ref20)
REF_ARGS = ["--preset", "smoke", "--no-progress", "--outer_steps", "20", "--checkpoint_every",
            "1"]
EVAL_ARGS = ["--suite", "smoke", "--no-progress", "--baselines", "adamw"]
CASES: dict[str, tuple[str, object]] = {}


def case(cid: str, title: str):
    """Registers a case function ``fn(ctx, rec)`` under ``cid`` (its section is cid[0])."""
    def deco(fn):
        CASES[cid] = (title, fn)
        return fn
    return deco


class Record:
    """One case's evidence and checks. A failed check of severity "bad" makes the case BAD,
    of severity "poor" POOR; a case whose checks all hold is GOOD."""

    def __init__(self):
        self.evidence: dict = {}
        self.checks: list[dict] = []
        self.not_run: str | None = None

    def __setitem__(self, key, value):
        self.evidence[key] = value

    def __getitem__(self, key):
        return self.evidence[key]

    def check(self, ok, what: str, severity: str = "poor") -> bool:
        self.checks.append({"what": what, "ok": bool(ok), "severity": severity})
        return bool(ok)

    def verdict(self) -> str:
        if self.not_run:
            return "NOT RUN"
        failed = {c["severity"] for c in self.checks if not c["ok"]}
        return "BAD" if "bad" in failed else "POOR" if failed else "GOOD"


class Ctx:
    """Where a probe writes (``out``), the environment of every child process, and the
    reference runs (built once, reused by copying)."""

    def __init__(self, out: Path):
        self.out = out.resolve()
        self.env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
                        JAX_COMPILATION_CACHE_DIR=str(self.out / "jaxcache"),
                        PYTHONUNBUFFERED="1")
        self._ref_theta = None

    def case_dir(self, cid: str) -> Path:
        d = self.out / "cases" / cid
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    def ref(self, name: str) -> Path:
        """A reference run, built on first use: ref20, stop8 (ref20's config stopped after 8
        steps), ev1 (the smoke eval of ref20)."""
        d = self.out / "refs" / name
        if (d / ".complete").exists():
            return d
        if d.exists():
            shutil.rmtree(d)
        if name == "ref20":
            r = self.mt(*REF_ARGS, "--out", d)
        elif name == "stop8":
            r = self.mt(*REF_ARGS, "--out", d, "--stop-after", "8")
        elif name == "ev1":
            r = self.ev(*EVAL_ARGS, "--lo", self.ref("ref20"), "--out", d)
        else:
            raise KeyError(name)
        if r["rc"] != 0:
            raise RuntimeError(f"reference {name} failed: {r['stderr_tail']}")
        (d / ".complete").write_text("")
        return d

    def copy(self, name: str, dst: Path) -> Path:
        shutil.copytree(self.ref(name), dst, ignore=shutil.ignore_patterns("run.lock",
                                                                           ".complete"))
        return dst

    # --- child processes ------------------------------------------------------------------
    def cmd(self, module: str, *args) -> list[str]:
        return [PY, "-m", module, *map(str, args)]

    def run(self, cmd, timeout=600, cwd=None) -> dict:
        t0 = time.time()
        try:
            p = subprocess.run(cmd, cwd=cwd or ROOT, env=self.env, capture_output=True,
                               text=True, timeout=timeout, errors="replace")
            rc, so, se = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:
            rc, so, se = "timeout", _text(e.stdout), _text(e.stderr)
        return summary(rc, so, se, time.time() - t0)

    def mt(self, *args, timeout=600) -> dict:
        return self.run(self.cmd("meta_train", *args), timeout)

    def ev(self, *args, timeout=600) -> dict:
        return self.run(self.cmd("eval", *args), timeout)

    def spawn(self, cmd, logdir: Path, name: str) -> subprocess.Popen:
        p = subprocess.Popen(cmd, cwd=ROOT, env=self.env,
                             stdout=open(logdir / f"{name}.out", "w"),
                             stderr=open(logdir / f"{name}.err", "w"))
        p.logs = (logdir / f"{name}.out", logdir / f"{name}.err")
        p.t0 = time.time()
        return p

    def py(self, script: str, *args, timeout=600) -> dict:
        return self.run([PY, "-c", script, *map(str, args)], timeout)

    # --- theta -----------------------------------------------------------------------------
    def ref_theta(self):
        if self._ref_theta is None:
            import lopt
            self._ref_theta = lopt.load_theta(self.ref("ref20"))[0]
        return self._ref_theta

    def bitwise(self, run: Path) -> dict:
        """lopt.load_theta(run): its step, its warnings, and whether theta equals ref20's."""
        import jax
        import numpy as np

        import lopt
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            try:
                theta, _, meta = lopt.load_theta(run)
            except Exception as e:  # noqa: BLE001 - recorded as evidence
                return {"error": f"{type(e).__name__}: {e}"[:400], "equal": False}
        a, b = jax.tree.leaves(theta), jax.tree.leaves(self.ref_theta())
        equal = len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                         for x, y in zip(a, b))
        return {"step": meta.get("step"), "equal": bool(equal),
                "warnings": [str(x.message)[:300] for x in w]}


def _text(b) -> str:
    if b is None:
        return ""
    return b.decode(errors="replace") if isinstance(b, bytes) else b


def finish(p: subprocess.Popen, timeout=600) -> dict:
    """Waits for a spawned process; its summary (rc, output tails)."""
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        rc = "timeout"
    so, se = (f.read_text(errors="replace") for f in p.logs)
    return summary(rc, so, se, time.time() - p.t0)


def lines(stderr: str) -> list[str]:
    """stderr without Python's warning lines (each warning and the source line under it),
    absl log lines and progress lines."""
    out, skip = [], False
    for line in stderr.strip().splitlines():
        if "Warning:" in line or line.startswith("warning:"):
            skip = True
            continue
        if skip and line.startswith("  "):
            continue
        skip = False
        if line.startswith(("WARNING:absl", "ERROR:absl", "I0", "W0", "E0")) or not line.strip():
            continue
        out.append(line)
    return out


def summary(rc, stdout: str, stderr: str, wall: float) -> dict:
    ls = lines(stderr)
    return {"rc": rc, "wall_s": round(wall, 1), "stdout_tail": stdout.strip().splitlines()[-3:],
            "stderr_tail": [x[:400] for x in stderr.strip().splitlines()[-6:]],
            "last_line": ls[-1][:600] if ls else "", "tracebacks": stderr.count("Traceback"),
            "warnings": [x[:300] for x in stderr.splitlines()
                         if "Warning:" in x or x.startswith("warning:")][:6],
            "_stderr": stderr, "_stdout": stdout}


def one_line_error(rec: Record, r: dict, rc=2, what="") -> bool:
    """The process stopped with rc ``rc`` and one ``error:`` line, no traceback."""
    last = r["last_line"]
    ok = r["rc"] == rc and r["tracebacks"] == 0 and (
        last.startswith("error:") or last.startswith("python -m ") and ": error: " in last)
    return rec.check(ok, f"{what}rc {rc} with one 'error:' line and no traceback")


def hint(r: dict) -> str | None:
    for line in reversed(r["_stderr"].splitlines()):
        if "continue with: " in line:
            return line.split("continue with: ", 1)[1].strip()
    return None


def run_hint(ctx: Ctx, h: str, timeout=600) -> dict:
    """Runs a printed ``python -m meta_train ...`` hint verbatim through bash (``python``
    being this interpreter)."""
    assert h.startswith("python ")
    return ctx.run(["bash", "-c", shlex.quote(PY) + h[len("python"):]], timeout)


def metric_steps(run: Path) -> list:
    steps = []
    f = run / "metrics.jsonl"
    if not f.exists():
        return steps
    for line in f.read_bytes().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            steps.append("garbage")
    return steps


def checkpoint_steps(run: Path) -> list[str]:
    d = run / "checkpoints"
    return sorted((p.name for p in d.iterdir()), key=lambda n: (len(n), n)) if d.is_dir() else []


def check_exact(ctx: Ctx, rec: Record, run: Path, metrics: bool = True) -> None:
    """The run reached step 20 with ref20's theta (and each metrics step once)."""
    b = ctx.bitwise(run)
    rec["theta"] = b
    rec.check(b.get("equal") and b.get("step") == 20, "theta at step 20 bitwise equal to ref20",
              "bad")
    rec.check(not b.get("warnings"), "lopt.load gives the final step without a warning")
    if metrics:
        steps = metric_steps(run)
        rec["metric_steps_ok"] = steps == list(range(1, 21))
        if steps != list(range(1, 21)):
            rec["metric_steps"] = steps
        rec.check(steps == list(range(1, 21)), "metrics.jsonl holds steps 1..20 once each")


def poll(pred, timeout: float = 120, dt: float = 0.002) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        time.sleep(dt)
    return False


def n_lines(f: Path) -> int:
    try:
        return f.read_bytes().count(b"\n")
    except OSError:
        return 0


def tmp_dirs(run: Path) -> list[str]:
    d = run / "checkpoints"
    try:
        return [p.name for p in d.iterdir() if "tmp" in p.name]
    except OSError:
        return []


def tree_state(d: Path) -> list:
    """(path, size, mtime) of everything under ``d``: to see that nothing was written."""
    if not d.exists():
        return []
    return sorted((str(p.relative_to(d)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in d.rglob("*") if p.name != "run.lock")


def kill(p: subprocess.Popen, sig=signal.SIGKILL) -> None:
    if p.poll() is None:
        p.send_signal(sig)


def in_namespace(ctx: Ctx, script: str, timeout=600) -> dict:
    """Runs a bash script as root of a new user and mount namespace (``unshare -rm``), where
    it may mount tmpfs and read-only binds that vanish with it."""
    return ctx.run(["unshare", "-rm", "bash", "-c", script], timeout)
