"""Section A: the meta-training lifecycle (kills, signals, concurrent runs, resume, read-only
and full disks), on ref20's config."""

from __future__ import annotations

import json
import shlex
import signal
import time

from common import (PY, REF_ARGS, case, check_exact, checkpoint_steps, finish, hint,
                    in_namespace, kill, metric_steps, n_lines, one_line_error, poll, run_hint,
                    tmp_dirs, tree_state)

# A run that SIGKILLs itself as it is about to write step N's lopt.json (after orbax
# committed step N): the kill between the commit and the JSON files.
_KILL_BEFORE_LOPT_JSON = """
import os, signal, sys
import meta_train.checkpointing as C
real, N = C.write_json, int(os.environ["PROBE_STEP"])
def write_json(path, doc, **k):
    if path.name == "lopt.json" and path.parent.name == str(N):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, doc, **k)
C.write_json = write_json
from meta_train.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _fresh(ctx, d, name="run", extra=()):
    return ctx.spawn(ctx.cmd("meta_train", *REF_ARGS, "--out", d / name, *extra), d, name)


def _resume_exact(ctx, rec, run, label="resume"):
    """``--out RUN --resume`` to step 20, then the bitwise checks."""
    r = ctx.mt("--out", run, "--resume", "--no-progress")
    rec[label] = {k: r[k] for k in ("rc", "last_line", "tracebacks", "warnings")}
    rec[label]["resumed"] = [x for x in r["_stderr"].splitlines()
                             if "resumed from" in x or "no checkpoint yet" in x][:3]
    rec.check(r["rc"] == 0 and "done: step 20" in r["_stdout"], f"{label} reaches step 20",
              "bad")
    rec.check(r["tracebacks"] == 0, f"{label} prints no traceback")
    check_exact(ctx, rec, run)
    return r


def _kill_when(ctx, rec, d, pred, sig=signal.SIGKILL, extra=(), timeout=120):
    p = _fresh(ctx, d, extra=extra)
    run = d / "run"
    hit = poll(lambda: p.poll() is not None or pred(run, p), timeout)
    alive = p.poll() is None
    kill(p, sig)
    r = finish(p)
    rec["killed_at"] = {"alive": alive, "hit": hit, "t_s": round(time.time() - p.t0, 2),
                        "metric_lines": n_lines(run / "metrics.jsonl"),
                        "checkpoints": checkpoint_steps(run),
                        "files": sorted(x.name for x in run.iterdir()) if run.exists() else []}
    rec["killed_run"] = {k: r[k] for k in ("rc", "last_line", "tracebacks")}
    rec.check(alive, "the signal reached a live run at the intended moment", "poor")
    return run, r


def _lines_at_least(n):
    return lambda run, p: n_lines(run / "metrics.jsonl") >= n


@case("A01", "SIGKILL 1 s after start (during imports), then --resume")
def a01(ctx, rec):
    d = ctx.case_dir("A01")
    t0 = time.time()
    run, _ = _kill_when(ctx, rec, d, lambda run, p: time.time() - t0 > 1.0)
    if (run / "config.json").exists():
        _resume_exact(ctx, rec, run)
    else:
        r = ctx.mt("--out", run, "--resume", "--no-progress")
        rec["resume"] = {k: r[k] for k in ("rc", "last_line")}
        one_line_error(rec, r, what="--resume of a run that saved nothing: ")


@case("A02", "SIGKILL mid-run (7 metrics lines), then --resume")
def a02(ctx, rec):
    d = ctx.case_dir("A02")
    run, _ = _kill_when(ctx, rec, d, _lines_at_least(7))
    _resume_exact(ctx, rec, run)


@case("A03", "SIGKILL during an orbax checkpoint write (tmp directory present)")
def a03(ctx, rec):
    d = ctx.case_dir("A03")
    run, _ = _kill_when(ctx, rec, d, lambda run, p: tmp_dirs(run) and
                        n_lines(run / "metrics.jsonl") >= 3, )
    rec["tmp_at_kill"] = tmp_dirs(run)
    _resume_exact(ctx, rec, run)
    rec.check(not tmp_dirs(run), "no tmp directory left after the resume")


def _kill_before_lopt_json(ctx, rec, cid, step):
    d = ctx.case_dir(cid)
    run = d / "run"
    r = ctx.run([PY, "-c", _KILL_BEFORE_LOPT_JSON, *REF_ARGS, "--out", str(run)], 300)
    ctx.env.pop("PROBE_STEP", None)
    rec["killed_run"] = {"rc": r["rc"], "checkpoints": checkpoint_steps(run),
                         "step_files": sorted(x.name for x in (run / "checkpoints" /
                                                               str(step)).iterdir())}
    rec.check(r["rc"] == -9, "the run was killed before step's lopt.json", "poor")
    rec["load_after_kill"] = ctx.bitwise(run)
    return run


@case("A04", "SIGKILL after orbax committed step 9, before its lopt.json")
def a04(ctx, rec):
    ctx.env["PROBE_STEP"] = "9"
    run = _kill_before_lopt_json(ctx, rec, "A04", 9)
    _resume_exact(ctx, rec, run)


@case("A05", "SIGKILL after config.json is written, before any checkpoint")
def a05(ctx, rec):
    d = ctx.case_dir("A05")
    run, _ = _kill_when(ctx, rec, d, lambda run, p: (run / "config.json").exists(),
                        )
    _resume_exact(ctx, rec, run)


@case("A06", "SIGKILL as the finished run exits (after 'done')")
def a06(ctx, rec):
    d = ctx.case_dir("A06")
    run, _ = _kill_when(ctx, rec, d, lambda run, p: "done:" in p.logs[0].read_text())
    rec["load_after_kill"] = ctx.bitwise(run)
    _resume_exact(ctx, rec, run)


@case("A07", "SIGKILL right after step 1")
def a07(ctx, rec):
    d = ctx.case_dir("A07")
    run, _ = _kill_when(ctx, rec, d, _lines_at_least(1))
    _resume_exact(ctx, rec, run)


@case("A08", "SIGKILL at step 4, SIGKILL the resume at step 10, resume again")
def a08(ctx, rec):
    d = ctx.case_dir("A08")
    run, _ = _kill_when(ctx, rec, d, _lines_at_least(4))
    p = ctx.spawn(ctx.cmd("meta_train", "--out", run, "--resume", "--no-progress"), d, "resume1")
    poll(lambda: p.poll() is not None or n_lines(run / "metrics.jsonl") >= 10, 120)
    rec.check(p.poll() is None, "the first resume was killed while running", "poor")
    kill(p)
    r = finish(p)
    rec["resume1"] = {"rc": r["rc"], "resumed": [x for x in r["_stderr"].splitlines()
                                                 if "resumed" in x],
                      "metric_lines": n_lines(run / "metrics.jsonl")}
    _resume_exact(ctx, rec, run)


@case("A09", "SIGKILL after the final step's orbax commit, before its lopt.json")
def a09(ctx, rec):
    ctx.env["PROBE_STEP"] = "20"
    run = _kill_before_lopt_json(ctx, rec, "A09", 20)
    r = _resume_exact(ctx, rec, run)
    rec["done_line"] = r["stdout_tail"][-1:]
    rec.check("meta-loss nan" not in r["_stdout"], "the resume's done line has no 'nan'")


def _signal_case(ctx, rec, cid, sig, when, twice=False, name="run"):
    d = ctx.case_dir(cid)
    p = ctx.spawn(ctx.cmd("meta_train", *REF_ARGS, "--out", d / name), d, "run")
    run = d / name
    poll(lambda: p.poll() is not None or when(run), 120)
    alive = p.poll() is None
    kill(p, sig)
    if twice:
        time.sleep(0.02)
        kill(p, sig)
    r = finish(p, 300)
    rec["signalled"] = {"alive": alive, "rc": r["rc"], "wall_s": r["wall_s"],
                        "checkpoints": checkpoint_steps(run), "tail": r["stderr_tail"][-3:],
                        "tracebacks": r["tracebacks"]}
    rec.check(alive, "the signal reached a live run", "poor")
    rec.check(r["rc"] == 128 + sig, f"rc {128 + sig}")
    rec.check(r["tracebacks"] == 0, "no traceback")
    return run, r


def _follow_hint(ctx, rec, run, r):
    h = hint(r)
    rec["hint"] = h
    if not rec.check(h is not None, "a 'continue with:' hint is printed"):
        _resume_exact(ctx, rec, run)
        return
    r2 = run_hint(ctx, h)
    rec["hint_run"] = {k: r2[k] for k in ("rc", "last_line", "tracebacks")}
    rec.check(r2["rc"] == 0 and "done: step 20" in r2["_stdout"], "the printed hint, run "
              "verbatim, finishes the run", "poor")
    check_exact(ctx, rec, run)


for _cid, _sig in (("A10", signal.SIGTERM), ("A11", signal.SIGINT), ("A12", signal.SIGHUP)):
    def _make(cid=_cid, sig=_sig):
        @case(cid, f"{sig.name} mid-run (6 metrics lines)")
        def f(ctx, rec):
            run, r = _signal_case(ctx, rec, cid, sig, lambda run: n_lines(
                run / "metrics.jsonl") >= 6)
            _follow_hint(ctx, rec, run, r)
    _make()


@case("A13", "SIGTERM while an orbax write is in flight")
def a13(ctx, rec):
    run, r = _signal_case(ctx, rec, "A13", signal.SIGTERM,
                          lambda run: tmp_dirs(run) and n_lines(run / "metrics.jsonl") >= 4)
    rec["tmp_after"] = tmp_dirs(run)
    _follow_hint(ctx, rec, run, r)


@case("A14", "Two SIGTERMs 20 ms apart")
def a14(ctx, rec):
    run, r = _signal_case(ctx, rec, "A14", signal.SIGTERM,
                          lambda run: n_lines(run / "metrics.jsonl") >= 5, twice=True)
    rec["tmp_after"] = tmp_dirs(run)
    _resume_exact(ctx, rec, run)


@case("A15", "SIGTERM 1 s after start (during imports)")
def a15(ctx, rec):
    d = ctx.case_dir("A15")
    t0 = time.time()
    run, r = _kill_when(ctx, rec, d, lambda run, p: time.time() - t0 > 1.0, signal.SIGTERM)
    rec["files"] = sorted(x.name for x in run.iterdir()) if run.exists() else []
    if (run / "config.json").exists():
        _follow_hint(ctx, rec, run, r)
    else:
        r2 = ctx.mt("--out", run, "--resume", "--no-progress")
        rec["resume"] = {k: r2[k] for k in ("rc", "last_line")}
        one_line_error(rec, r2, what="--resume of a run that saved nothing: ")


@case("A16", "SIGTERM right after invocations.jsonl, before config.json")
def a16(ctx, rec):
    d = ctx.case_dir("A16")
    for attempt in range(3):
        sub = d / f"try{attempt}"
        sub.mkdir()
        run, r = _kill_when(ctx, rec, sub, lambda run, p: (run / "invocations.jsonl").exists(),
                            signal.SIGTERM)
        if not (run / "config.json").exists() or attempt == 2:
            break
    rec["attempts"] = attempt + 1
    rec["config_saved_at_signal"] = (run / "config.json").exists()
    rec["stopped_tail"] = r["stderr_tail"][-2:]
    h = hint(r)
    rec["hint"] = h
    if h:
        r2 = run_hint(ctx, h)
        rec["hint_run"] = {k: r2[k] for k in ("rc", "last_line", "tracebacks")}
        rec.check(r2["rc"] == 0 and "done: step 20" in r2["_stdout"],
                  "the printed hint, run verbatim, finishes the run")
        check_exact(ctx, rec, run)
    else:
        r2 = ctx.mt("--out", run, "--resume", "--no-progress")
        rec["resume"] = {k: r2[k] for k in ("rc", "last_line")}
        one_line_error(rec, r2, what="no hint; --resume: ")
        # the error's advice: drop --resume (the directory holds only the invocation)
        r3 = ctx.mt(*REF_ARGS, "--out", run)
        rec["without_resume"] = {k: r3[k] for k in ("rc", "last_line")}
        rec.check(r3["rc"] == 0, "the command without --resume starts the run")
        check_exact(ctx, rec, run)


@case("A17", "SIGTERM on --out with a space and a quote, hint run through bash")
def a17(ctx, rec):
    run, r = _signal_case(ctx, rec, "A17", signal.SIGTERM,
                          lambda run: n_lines(run / "metrics.jsonl") >= 5,
                          name="dir with space/it's run")
    _follow_hint(ctx, rec, run, r)


def _concurrent(ctx, rec, d, extra_b, resume=False):
    run = d / "run"
    if resume:
        ctx.copy("stop8", run)
        a = ctx.spawn(ctx.cmd("meta_train", "--out", run, "--resume", "--no-progress"), d, "a")
        time.sleep(0.3)
        b = ctx.spawn(ctx.cmd("meta_train", "--out", run, "--resume", "--no-progress"), d, "b")
    else:
        a = _fresh(ctx, d)
        time.sleep(0.3)
        b = ctx.spawn(ctx.cmd("meta_train", *REF_ARGS, "--out", run, *extra_b), d, "b")
    ra, rb = finish(a), finish(b)
    rec["a"] = {k: ra[k] for k in ("rc", "last_line", "tracebacks")}
    rec["b"] = {k: rb[k] for k in ("rc", "last_line", "tracebacks")}
    ok = sorted([ra["rc"], rb["rc"]]) == [0, 2]
    rec.check(ok, "one run finishes, the other is refused (rc 0 and 2)", "bad")
    loser = rb if rb["rc"] != 0 else ra
    rec.check(loser["tracebacks"] == 0 and loser["last_line"].startswith("error:")
              and "in use" in loser["last_line"], "the refused one says in one line the "
              "directory is in use")
    return run, ra, rb


@case("A18", "Two concurrent fresh runs, same config, same --out (0.3 s apart)")
def a18(ctx, rec):
    d = ctx.case_dir("A18")
    run, ra, rb = _concurrent(ctx, rec, d, ())
    check_exact(ctx, rec, run)


@case("A19", "Two concurrent fresh runs, different configs (seed 0 / 20 steps, seed 1 / 12)")
def a19(ctx, rec):
    d = ctx.case_dir("A19")
    run, ra, rb = _concurrent(ctx, rec, d, ("--outer_steps", "12", "--seed", "1"))
    cfg = json.loads((run / "config.json").read_text())
    rec["config"] = {"seed": cfg.get("seed"), "outer_steps": cfg.get("outer_steps")}
    winner_a = ra["rc"] == 0
    rec.check((cfg.get("seed"), cfg.get("outer_steps")) == ((0, 20) if winner_a else (1, 12)),
              "config.json is the finished run's", "bad")
    if winner_a:
        check_exact(ctx, rec, run)
    r = ctx.mt("--out", run, "--resume", "--no-progress")
    rec["later_resume"] = {k: r[k] for k in ("rc", "last_line")}
    rec.check(r["rc"] == 0, "a later --resume of the finished run works", "bad")


@case("A20", "Two concurrent --resume of one stopped run (stop8)")
def a20(ctx, rec):
    d = ctx.case_dir("A20")
    run, ra, rb = _concurrent(ctx, rec, d, (), resume=True)
    check_exact(ctx, rec, run)


@case("A21", "--resume on an empty directory")
def a21(ctx, rec):
    d = ctx.case_dir("A21")
    (d / "empty").mkdir()
    r = ctx.mt("--out", d / "empty", "--resume", "--no-progress")
    rec["r"] = {k: r[k] for k in ("rc", "last_line")}
    one_line_error(rec, r)
    rec.check(tree_state(d / "empty") == [], "nothing written")


@case("A22", "--resume on a nonexistent directory")
def a22(ctx, rec):
    d = ctx.case_dir("A22")
    r = ctx.mt("--out", d / "nonexist", "--resume", "--no-progress")
    rec["r"] = {k: r[k] for k in ("rc", "last_line")}
    one_line_error(rec, r)
    rec.check(not (d / "nonexist").exists(), "nothing created")


@case("A23", "--resume with another preset (quick, smoke-sp) on a smoke run")
def a23(ctx, rec):
    d = ctx.case_dir("A23")
    run = ctx.copy("ref20", d / "run")
    before = tree_state(run)
    for preset in ("quick", "smoke-sp"):
        r = ctx.mt("--preset", preset, "--out", run, "--resume", "--no-progress")
        rec[preset] = {k: r[k] for k in ("rc", "last_line")}
        one_line_error(rec, r, what=f"{preset}: ")
    rec.check(tree_state(run) == before, "nothing written", "bad")


@case("A24", "New run (no --resume) into an existing run")
def a24(ctx, rec):
    d = ctx.case_dir("A24")
    run = ctx.copy("ref20", d / "run")
    before = tree_state(run)
    r = ctx.mt("--preset", "smoke", "--out", run, "--no-progress")
    rec["r"] = {k: r[k] for k in ("rc", "last_line")}
    one_line_error(rec, r)
    rec.check(tree_state(run) == before, "nothing written", "bad")


@case("A25", "Extend a finished run: --out RUN --resume --outer_steps 25")
def a25(ctx, rec):
    d = ctx.case_dir("A25")
    run = ctx.copy("ref20", d / "run")
    r = ctx.mt("--out", run, "--resume", "--outer_steps", "25", "--no-progress")
    rec["r"] = {k: r[k] for k in ("rc", "last_line", "tracebacks")}
    rec["stdout"] = r["stdout_tail"][-1:]
    b = ctx.bitwise(run)
    rec["load"] = {"step": b.get("step"), "warnings": b.get("warnings")}
    rec["metric_steps_ok"] = metric_steps(run) == list(range(1, 26))
    rec.check(r["rc"] == 0 and "done: step 25" in r["_stdout"], "the run is extended to 25")
    rec.check(b.get("step") == 25 and rec["metric_steps_ok"], "lopt.load gives step 25, "
              "metrics 1..25", "bad")


@case("A26", "config.json without es.loss_weight and lo.mup_base, then --resume")
def a26(ctx, rec):
    d = ctx.case_dir("A26")
    run = ctx.copy("stop8", d / "run")
    cfg = json.loads((run / "config.json").read_text())
    cfg["es"].pop("loss_weight")
    cfg["lo"].pop("mup_base")
    (run / "config.json").write_text(json.dumps(cfg, indent=2))
    _resume_exact(ctx, rec, run)


_RO_TMPFS = "mount -t tmpfs -o ro tmpfs {d} && cd {root} && exec {cmd}"
_RO_BIND = ("mount --bind {src} {d} && mount -o remount,bind,ro {d} && cd {root} && "
            "exec {cmd}")


def _ns_cmd(ctx, *args):
    return " ".join(shlex.quote(str(a)) for a in [PY, *args])


@case("A27", "New run into a read-only directory (read-only tmpfs)")
def a27(ctx, rec):
    from common import ROOT
    d = ctx.case_dir("A27")
    (d / "ro").mkdir()
    r = in_namespace(ctx, _RO_TMPFS.format(d=d / "ro", root=ROOT, cmd=_ns_cmd(
        ctx, "-m", "meta_train", "--preset", "smoke", "--no-progress", "--out", d / "ro")))
    rec["r"] = {k: r[k] for k in ("rc", "last_line", "tracebacks")}
    rec.check(r["rc"] != 0 and r["tracebacks"] == 0 and r["last_line"].startswith("error:"),
              "one 'error:' line, no traceback")


@case("A28", "--resume of a finished run on a read-only bind mount")
def a28(ctx, rec):
    from common import ROOT
    d = ctx.case_dir("A28")
    src = ctx.copy("ref20", d / "src")
    (d / "ro").mkdir()
    before = tree_state(src)
    r = in_namespace(ctx, _RO_BIND.format(src=src, d=d / "ro", root=ROOT, cmd=_ns_cmd(
        ctx, "-m", "meta_train", "--out", d / "ro", "--resume", "--no-progress")))
    rec["r"] = {k: r[k] for k in ("rc", "last_line", "tracebacks")}
    rec.check(r["rc"] != 0 and r["tracebacks"] == 0 and r["last_line"].startswith("error:"),
              "one 'error:' line, no traceback")
    rec.check(tree_state(src) == before, "the run is unchanged", "bad")


@case("A29", "lopt.load of a run on a read-only mount")
def a29(ctx, rec):
    from common import ROOT
    d = ctx.case_dir("A29")
    src = ctx.copy("ref20", d / "src")
    (d / "ro").mkdir()
    r = in_namespace(ctx, _RO_BIND.format(src=src, d=d / "ro", root=ROOT, cmd=_ns_cmd(
        ctx, "-c", "import sys, lopt; print('step', lopt.load_theta(sys.argv[1])[2]['step'])",
        d / "ro")))
    rec["r"] = {"rc": r["rc"], "stdout": r["stdout_tail"], "tracebacks": r["tracebacks"]}
    rec.check(r["rc"] == 0 and "step 20" in r["_stdout"], "loads step 20", "bad")


@case("A30", "--out is an existing regular file")
def a30(ctx, rec):
    d = ctx.case_dir("A30")
    f = d / "afile"
    f.write_text("keep me")
    r = ctx.mt("--preset", "smoke", "--out", f, "--no-progress")
    rec["r"] = {k: r[k] for k in ("rc", "last_line")}
    one_line_error(rec, r)
    rec.check(f.read_text() == "keep me", "the file is intact", "bad")


_FULL = """set -u
mount -t tmpfs -o size={size} tmpfs {m}
cd {root}
{first}
ls -la {m}/run/checkpoints {m}/run/checkpoints/* > {d}/after_first.ls 2>&1
find {m}/run -name '*tmp*' > {d}/tmp_left.txt
rm -rf {m}/filler {m}/pin6
mount -o remount,size=32m tmpfs {m}
{py} -m meta_train --out {m}/run --resume --no-progress > {d}/resume.out 2> {d}/resume.err
echo $? > {d}/resume.rc
cp -a {m}/run {d}/copy
"""
_FIRST = "{py} -m meta_train {args} > {d}/first.out 2> {d}/first.err; echo $? > {d}/first.rc"
# stop8 on an 8 MB tmpfs with a filler file that leaves FREE KB, then --resume --stop-after 1.
# FREE grows from about step 8's size without its lopt.json until step 9's orbax state fits
# and the disk fills after it, at lopt.json. Step 6 is hard-linked (pin6), so that orbax's
# pruning of it frees no space before lopt.json is written.
_LOPT_JSON_FULL = """s8={stop8}/checkpoints/8
base=$(( $(du -sk $s8 | cut -f1) - $(du -sk $s8/lopt.json | cut -f1) ))
for free in $(seq $((base - 24)) 8 $((base + 160))); do
  rm -rf {m}/run {m}/filler {m}/pin6; cp -a {stop8} {m}/run; rm -f {m}/run/.complete
  cp -al {m}/run/checkpoints/6 {m}/pin6
  avail=$(df --output=avail -B1 {m} | tail -1)
  head -c $((avail - free * 1024)) /dev/zero > {m}/filler
  echo $free > {d}/free_kb.txt
  {py} -m meta_train --out {m}/run --resume --stop-after 1 --no-progress \\
    > {d}/first.out 2> {d}/first.err
  echo $? > {d}/first.rc
  [ -d {m}/run/checkpoints/9 ] && break
done"""


def _full_disk(ctx, rec, cid, size, first):
    from common import ROOT, lines
    d = ctx.case_dir(cid)
    (d / "m").mkdir()
    fmt = dict(m=d / "m", d=d, py=shlex.quote(PY), stop8=ctx.ref("stop8"))
    r = in_namespace(ctx, _FULL.format(size=size, root=ROOT, first=first.format(**fmt), **fmt))
    rec["script_rc"] = r["rc"]
    first_err = (d / "first.err").read_text(errors="replace")
    fl = lines(first_err)
    rec["first"] = {"rc": (d / "first.rc").read_text().strip(),
                    "tracebacks": first_err.count("Traceback"),
                    "last_line": fl[-1][:500] if fl else ""}
    rec["tmp_left"] = (d / "tmp_left.txt").read_text().split()
    rec["resume"] = {"rc": (d / "resume.rc").read_text().strip(),
                     "tail": (d / "resume.err").read_text(errors="replace").strip()
                     .splitlines()[-2:], "stdout": (d / "resume.out").read_text()
                     .strip().splitlines()[-1:]}
    rec.check(rec["first"]["tracebacks"] == 0 and rec["first"]["last_line"].startswith(
        "error:") and "continue with:" in rec["first"]["last_line"],
        "the full disk is one 'error:' line with a resume hint")
    rec.check(not rec["tmp_left"], "no temporary file or directory left")
    rec.check(rec["resume"]["rc"] == "0", "the resume after freeing space finishes", "bad")
    check_exact(ctx, rec, d / "copy")
    return d


@case("A31", "Disk full (tmpfs 1.1 MB) during a checkpoint write; remount larger, --resume")
def a31(ctx, rec):
    _full_disk(ctx, rec, "A31", "1100k", _FIRST.replace(
        "{args}", " ".join(REF_ARGS) + " --out {m}/run"))


@case("A32", "Disk full while writing lopt.json (stop8; a filler leaves room for the orbax "
             "state only)")
def a32(ctx, rec):
    d = _full_disk(ctx, rec, "A32", "8m", _LOPT_JSON_FULL)
    rec["free_kb"] = (d / "free_kb.txt").read_text().strip()
    listing = (d / "after_first.ls").read_text()
    step9 = listing.split("checkpoints/9:", 1)[1] if "checkpoints/9:" in listing else ""
    rec["step9_files"] = [x.split()[-1] for x in step9.strip().splitlines()[3:]]
    rec["reproduced"] = step9 != "" and "lopt.json" not in rec["step9_files"]
    if not rec["reproduced"]:
        rec.not_run = (f"the full disk did not land at lopt.json (free {rec['free_kb']} KB; "
                       f"step 9 files: {rec['step9_files']})")


@case("A33", "--resume-or-start on an empty directory (stop after 5), then again")
def a33(ctx, rec):
    d = ctx.case_dir("A33")
    run = d / "run"
    run.mkdir()
    r1 = ctx.mt(*REF_ARGS, "--out", run, "--resume-or-start", "--stop-after", "5")
    r2 = ctx.mt(*REF_ARGS, "--out", run, "--resume-or-start")
    rec["first"] = {k: r1[k] for k in ("rc", "last_line")}
    rec["second"] = {"rc": r2["rc"], "resumed": [x for x in r2["_stderr"].splitlines()
                                                 if "resumed" in x]}
    rec.check(r1["rc"] == 0 and r2["rc"] == 0 and rec["second"]["resumed"] ==
              ["resumed from step 5"], "started, then resumed from step 5", "bad")
    check_exact(ctx, rec, run)
