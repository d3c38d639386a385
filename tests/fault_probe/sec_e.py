"""Section E: eval (``python -m eval --suite smoke --no-progress --baselines adamw --lo
ref20``; reference ev1). Rows are compared on results.csv without its timing column."""

from __future__ import annotations

import csv
import json
import shlex
import time

from common import (EVAL_ARGS, PY, ROOT, case, finish, in_namespace, kill, one_line_error,
                    poll, tree_state)


def _rows(out):
    with open(out / "results.csv") as f:
        return [{k: v for k, v in r.items() if k != "seconds_per_step"}
                for r in csv.DictReader(f)]


def _ev(ctx, out, *extra, lo=None, timeout=600):
    return ctx.ev(*EVAL_ARGS, "--lo", lo or ctx.ref("ref20"), "--out", out, *extra,
                  timeout=timeout)


def _keep(r):
    return {k: r[k] for k in ("rc", "last_line", "tracebacks", "wall_s")}


def _error_case(cid, title, extra, lo=None, base=EVAL_ARGS):
    @case(cid, title)
    def f(ctx, rec):
        d = ctx.case_dir(cid)
        lo_ = lo(ctx, d) if callable(lo) else ctx.ref("ref20")
        r = ctx.ev(*base, "--lo", *([lo_] if not isinstance(lo_, list) else lo_),
                   "--out", d / "ev", *extra, timeout=300)
        rec["r"] = _keep(r)
        one_line_error(rec, r)
        rec["created"] = [x[0] for x in tree_state(d / "ev")][:5]
        rec.check(not (d / "ev" / "cells").exists() or not any((d / "ev" / "cells").iterdir()),
                  "nothing trained")
    return f


_error_case("E01", "--lo runs/probe/nope", [], lo=lambda ctx, d: [str(d / "nope")])
_error_case("E02", "--lo X=runs/probe/nope", [], lo=lambda ctx, d: [f"X={d / 'nope'}"])


def _garbage_lo(ctx, d):
    run = ctx.copy("stop8", d / "run")
    for s in (6, 7, 8):
        (run / "checkpoints" / str(s) / "lopt.json").write_bytes(b"\xff\xfe garbage")
    return [str(run)]


_error_case("E03", "--lo a run whose lopt.json files are all garbage", [], lo=_garbage_lo)
_error_case("E04", "--baselines adamw,nope", ["--baselines", "adamw,nope"])
_error_case("E05", "--wider 0", ["--wider", "0"])
_error_case("E06", "--wider -2", ["--wider", "-2"])
_error_case("E07", "--wider abc", ["--wider", "abc"])
_error_case("E08", "--wider 0.5", ["--wider", "0.5"])
_error_case("E09", "--axes widr", ["--axes", "widr"])
_error_case("E10", "--seeds 0", ["--seeds", "0"])
_error_case("E11", "--group-runs 0", ["--group-runs", "0"])
_error_case("E13", "--transformer lm-nope", ["--transformer", "lm-nope"])


@case("E12", '--baselines "" (on a copy of ev1)')
def e12(ctx, rec):
    d = ctx.case_dir("E12")
    out = ctx.copy("ev1", d / "ev")
    r = ctx.ev("--suite", "smoke", "--no-progress", "--baselines", "", "--lo", ctx.ref("ref20"),
               "--out", out)
    rec["r"] = _keep(r)
    rows = _rows(out)
    rec["optimizers"] = sorted({x["optimizer"] for x in rows})
    rec.check(r["rc"] == 0 and rows == _rows(ctx.ref("ev1")), "the suite's default baselines "
              "(rows equal to ev1)", "bad")


def _cells(out):
    """cells/*.json by name: (key, content)."""
    res = {}
    for f in sorted((out / "cells").glob("*.json")):
        doc = json.loads(f.read_text())
        res[f.name] = doc
    return res


def _lo_cells(out):
    """Two μLO cells of one optimizer on different tasks: (w16 cell, w32 cell) names."""
    cells = _cells(out)
    by = {}
    for name, doc in cells.items():
        k = doc["key"]
        if k.get("lo_digest"):
            by.setdefault(k["lo_digest"], []).append((k["task"], name))
    for group in by.values():
        if len(group) >= 2:
            group.sort()
            return group[0][1], group[1][1]
    raise RuntimeError("no two cells of one learned optimizer")


def _cache_case(cid, title, damage, expect_warning=True):
    @case(cid, title)
    def f(ctx, rec):
        d = ctx.case_dir(cid)
        out = ctx.copy("ev1", d / "ev")
        target = damage(out)
        rec["damaged"] = target
        r = _ev(ctx, out)
        rec["r"] = _keep(r)
        rec["warnings"] = r["warnings"]
        ok = r["rc"] == 0 and _rows(out) == _rows(ctx.ref("ev1"))
        rec.check(ok, "rc 0 and rows identical to ev1", "bad")
        rec.check(r["tracebacks"] == 0, "no traceback")
        if expect_warning:
            rec.check(any(target in w for w in r["warnings"]), "a warning names the file")
        doc = json.loads((out / "cells" / target).read_text())
        ref = json.loads((ctx.ref("ev1") / "cells" / target).read_text())
        rec.check(doc.get("key") == ref["key"] and doc["losses"] == ref["losses"],
                  "the file is rewritten with the group's numbers", "bad")
    return f


def _first_lo(out):
    return _lo_cells(out)[0]


def _trunc(out):
    t = _first_lo(out)
    f = out / "cells" / t
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return t


def _write(content):
    def damage(out):
        t = _first_lo(out)
        (out / "cells" / t).write_bytes(content)
        return t
    return damage


def _other_cell(out):
    a, b = _lo_cells(out)
    (out / "cells" / a).write_bytes((out / "cells" / b).read_bytes())
    return a


def _short_curve(out):
    t = _first_lo(out)
    f = out / "cells" / t
    doc = json.loads(f.read_text())

    def cut(x):
        return [cut(y) for y in x] if isinstance(x[0], list) else x[:5]
    doc["losses"] = cut(doc["losses"])
    f.write_text(json.dumps(doc))
    return t


_cache_case("E14", "Cached cell file truncated to half, then re-run", _trunc)
_cache_case("E15", "Cached cell file emptied", _write(b""))
_cache_case("E16", "Cached cell file replaced by non-UTF-8 bytes", _write(b"\xff\xfe\x00\x80"))
_cache_case("E17", "Cached cell file = {}", _write(b"{}"))
_cache_case("E18", "Cached cell file = null", _write(b"null"))
_cache_case("E19", "Cached cell overwritten with another cell's valid file (w32 over w16 μLO)",
            _other_cell)
_cache_case("E20", "Cached cell whose losses were cut to 5 of the 30 steps", _short_curve)


@case("E21", "Two eval processes started 1 s apart on one --out")
def e21(ctx, rec):
    d = ctx.case_dir("E21")
    cmd = ctx.cmd("eval", *EVAL_ARGS, "--lo", ctx.ref("ref20"), "--out", d / "ev")
    a = ctx.spawn(cmd, d, "a")
    time.sleep(1.0)
    b = ctx.spawn(cmd, d, "b")
    ra, rb = finish(a), finish(b)
    rec["a"], rec["b"] = _keep(ra), _keep(rb)
    rec["waited"] = [x[:200] for x in (ra["_stderr"] + rb["_stderr"]).splitlines()
                     if "waiting" in x][:2]
    rec["cells"] = len(list((d / "ev" / "cells").glob("*.json")))
    rec.check(ra["rc"] == 0 and rb["rc"] == 0 and _rows(d / "ev") == _rows(ctx.ref("ev1")),
              "both finish, rows identical to ev1", "bad")


@case("E22", "SIGKILL an eval after 4 cells, then re-run")
def e22(ctx, rec):
    d = ctx.case_dir("E22")
    out = d / "ev"
    p = ctx.spawn(ctx.cmd("eval", *EVAL_ARGS, "--lo", ctx.ref("ref20"), "--out", out), d, "a")
    poll(lambda: p.poll() is not None or len(list((out / "cells").glob("*.json"))) >= 4, 300)
    rec["alive_at_kill"] = p.poll() is None
    kill(p)
    finish(p)
    rec["cells_at_kill"] = len(list((out / "cells").glob("*.json")))
    rec["locks_left"] = len(list((out / "cells").glob("*.lock")))
    r = _ev(ctx, out)
    rec["r"] = _keep(r)
    rec.check(r["rc"] == 0 and _rows(out) == _rows(ctx.ref("ev1")), "rc 0, rows identical",
              "bad")


@case("E23", "eval --lo RUN --out RUN (into the meta-training run directory)")
def e23(ctx, rec):
    d = ctx.case_dir("E23")
    run = ctx.copy("ref20", d / "run")
    before = tree_state(run)
    r = _ev(ctx, run, lo=run)
    rec["r"] = _keep(r)
    one_line_error(rec, r)
    rec.check(tree_state(run) == before, "the run (its tb/ included) is untouched", "bad")


@case("E24", "eval --out on a read-only mount")
def e24(ctx, rec):
    d = ctx.case_dir("E24")
    (d / "ro").mkdir()
    cmd = " ".join(shlex.quote(str(a)) for a in [PY, "-m", "eval", *EVAL_ARGS, "--lo",
                                                 ctx.ref("ref20"), "--out", d / "ro"])
    r = in_namespace(ctx, f"mount -t tmpfs -o ro tmpfs {d / 'ro'} && cd {ROOT} && exec {cmd}")
    rec["r"] = _keep(r)
    one_line_error(rec, r)


@case("E25", "eval --out is a regular file")
def e25(ctx, rec):
    d = ctx.case_dir("E25")
    f = d / "afile"
    f.write_text("keep me")
    r = _ev(ctx, f)
    rec["r"] = _keep(r)
    one_line_error(rec, r)
    rec.check(f.read_text() == "keep me", "the file is intact", "bad")

