"""Reruns the fault probe of docs/fault-probe.md: meta-training under kills, signals and
concurrent runs (A), corrupt files (B), bad command-line input (C), library input (D) and
eval (E), and writes each case's evidence, checks and verdict to OUT/results.json.

    taskset -c 0 python tests/fault_probe/probe.py --out runs/probe [--only A01,B05]
        [--section A]

Reference runs (ref20, stop8, ev1) are built once under OUT/refs and copied by the cases;
each case works in OUT/cases/<id>. A case's verdict follows from its checks (common.Record):
a failed check of severity "bad" makes it BAD, of severity "poor" POOR. Cases that need
mounts run in a user and mount namespace (``unshare -rm``)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

import sec_a  # noqa: E402,F401 - each module registers its cases
import sec_b  # noqa: E402,F401
import sec_c  # noqa: E402,F401
import sec_d  # noqa: E402,F401
import sec_e  # noqa: E402,F401
from common import CASES, ROOT, Ctx, Record  # noqa: E402


def _commit() -> str:
    r = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                       capture_output=True, text=True)
    return r.stdout.strip()


def _strip(x):
    """Evidence without the full outputs (keys starting with '_')."""
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if not str(k).startswith("_")}
    if isinstance(x, (list, tuple)):
        return [_strip(v) for v in x]
    if isinstance(x, float) and x != x:
        return "nan"
    return x


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/probe", help="where refs, cases and results go")
    ap.add_argument("--only", default=None, help="comma-separated case ids, e.g. A01,B05")
    ap.add_argument("--section", default=None, help="sections to run, e.g. A or BCE")
    ap.add_argument("--cpu", type=int, default=0, help="the core every process is pinned to")
    args = ap.parse_args(argv)
    os.sched_setaffinity(0, {args.cpu})     # children inherit it
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    ctx = Ctx(Path(args.out))
    ctx.out.mkdir(parents=True, exist_ok=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = ctx.env["JAX_COMPILATION_CACHE_DIR"]
    ids = sorted(CASES)
    if args.only:
        ids = [i for i in args.only.split(",") if i]
        unknown = [i for i in ids if i not in CASES]
        if unknown:
            ap.error(f"unknown case(s) {unknown}")
    if args.section:
        ids = [i for i in ids if i[0] in args.section.upper()]
    results_file = ctx.out / "results.json"
    doc = json.loads(results_file.read_text()) if results_file.exists() else {"cases": {}}
    t_all = time.time()
    commit = _commit()
    for cid in ids:
        title, fn = CASES[cid]
        rec = Record()
        t0 = time.time()
        try:
            fn(ctx, rec)
            verdict = rec.verdict()
        except Exception as e:  # noqa: BLE001 - a driver failure is reported, not a verdict
            rec["driver_error"] = "".join(traceback.format_exception(e))[-2000:]
            verdict = "ERROR"
        doc["cases"][cid] = {"section": cid[0], "case": title, "verdict": verdict,
                             "commit": commit,
                             "failed": [c["what"] for c in rec.checks if not c["ok"]],
                             "checks": rec.checks, "not_run": rec.not_run,
                             "evidence": _strip(rec.evidence),
                             "wall_s": round(time.time() - t0, 1)}
        print(f"{cid} {verdict:7s} {time.time() - t0:6.1f}s {title}"
              + (f"  [failed: {'; '.join(doc['cases'][cid]['failed'])}]"
                 if doc["cases"][cid]["failed"] else ""), flush=True)
        doc.update(updated=time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                          time.gmtime()))
        results_file.write_text(json.dumps(doc, indent=1, default=str))
    doc["last_invocation"] = {"cases": ids, "wall_s": round(time.time() - t_all, 1)}
    totals = {}
    for c in doc["cases"].values():
        totals.setdefault(c["section"], {}).setdefault(c["verdict"], 0)
        totals[c["section"]][c["verdict"]] += 1
    doc["totals"] = totals
    results_file.write_text(json.dumps(doc, indent=1, default=str))
    print(json.dumps(totals), f"wall {time.time() - t_all:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
