"""Stamp groups cached before keys held digests with the digests of the code that computed them.

A group cached before keys held ``code``, ``init`` and ``data`` (:mod:`eval.keys`) is a miss
today. Stamping it with today's digests would claim what no one checked; this tool instead
finds the commit(s) whose code computed the group, checks each out into a temporary git
worktree under ``/tmp``, and computes the digests there: today's ``eval/keys.py`` (copied
under the private module name ``_stamp_keys_today``) applied to that commit's ``lopt``,
``meta_train`` and ``eval`` (the optimizer's code, and each task's init and data as that
commit's ``meta_train.tasks.get_task`` builds them). The group is rewritten with its key
completed by those digests and ``"stamped_from": "<commit>"`` next to the key, under the
file name today's cache looks up for that key (the old file is removed: the stamped file
holds all of it). Today's cache then reuses it exactly when the old code's digests equal
today's; otherwise it is a miss, as a group computed by other code should be.

Which commit computed a group: the report next to the cells directory (``results.json``)
names the commit of its run (``commit``) or, for a merged report, the run that supplied
each cell (``merged_from``). A group committed to git before that run was computed earlier
(the run reused it from its cache), so the candidates are every commit from the earliest to
the latest of (the report's commit(s) for the group's cell, the commit that first added the
file) that changed ``lopt/``, ``meta_train/`` or ``eval/`` (any other commit computes what
its parent does), plus the earliest one. A group is stamped only if the digests agree at
every candidate, and never when the old code cannot be imported or run.

    python -m eval.stamp checkpoints/eval-full-wider/cells [--commit SHA] [--dry-run]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from eval.cache import group_file_name, group_problem

DIGESTS = ("code", "init", "data")
CODE_PATHS = ("lopt", "meta_train", "eval")     # what eval.keys hashes, and packaged data
TODAY = Path(__file__).resolve().parents[1]    # the code whose cache looks groups up

# Runs in the old commit's worktree (PYTHONPATH: the probe dir, then the worktree): today's
# eval/keys.py as _stamp_keys_today, applied to the old lopt / meta_train / eval.
_PROBE = r'''
import json, sys, traceback
from pathlib import Path

def err(e):
    return {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}

req = json.loads(Path(sys.argv[1]).read_text())
out = {}
try:
    import eval as ev, lopt as lo, meta_train as mt
    for m in (ev, lo, mt):
        if not Path(m.__file__).resolve().is_relative_to(Path(req["root"]).resolve()):
            raise ImportError(f"{m.__name__} imported from {m.__file__}, not the worktree")
    import _stamp_keys_today as K
    from meta_train.tasks import get_task
    import eval.suite
except BaseException as e:
    print(json.dumps({"import_error": err(e)["error"]}))
    sys.exit(0)
out["baselines"] = {}
for name in req["baselines"]:
    try:
        out["baselines"][name] = K.baseline_digest(name)
    except BaseException as e:
        out["baselines"][name] = err(e)
if req["lo"]:
    try:
        out["lo"] = K.lo_code_digest(eval.suite.make_lo)
    except BaseException as e:
        out["lo"] = err(e)
out["tasks"] = {}
for t in req["tasks"]:
    try:
        task = get_task(t)
        out["tasks"][t] = {"init": K.init_digest(t), "data": K.data_digest(task),
                           "source": task.source}
    except BaseException as e:
        out["tasks"][t] = err(e)
try:                # not in any key: the inner training loop, reported for information
    from meta_train.inner import train
    out["loop"] = K.code_digest(train)
except BaseException as e:
    out["loop"] = err(e)
print(json.dumps(out))
'''


@dataclasses.dataclass
class Outcome:
    """What became of one group file: ``status`` is "stamped", "skipped" or "has digests"."""
    file: str
    what: str
    status: str
    reason: str = ""
    commit: str = ""
    new_file: str = ""
    reusable: bool | None = None
    stale_in: tuple[str, ...] = ()      # digests that differ from today's
    loop_changed: bool | None = None    # the inner training loop differs from today's


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def _full(repo: Path, rev: str) -> str | None:
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", rev + "^{commit}")
    except subprocess.CalledProcessError:
        return None


def _base_task(task: str) -> str:
    """The cell's task of a group's task: the μP variant (``-sp`` dropped)."""
    try:
        from eval.suite import variant
        return variant(task, "mup")
    except Exception:           # a name today's grammar does not parse
        return task[:-3] if task.endswith("-sp") else task


def report_commits(report: dict | None, key: dict) -> tuple[list[str], str]:
    """The commits of the runs that supplied the cell of a group with ``key``, from a report
    document (``results.json``), or ([], why not)."""
    if report is None:
        return [], "no results.json next to the cells directory (use --commit)"
    base = _base_task(key.get("task", ""))
    label = f"{base} ({key.get('steps')} steps)"
    cells = [c for c in report.get("cells", [])
             if c.get("task") in (base, key.get("task")) and c.get("steps") == key.get("steps")]
    if not cells:
        return [], f"its cell {label} is not in the report"
    merged = report.get("merged_from")
    if merged:
        commits = [m["commit"] for m in merged if label in m.get("cells", [])]
        if not commits:
            return [], f"the merged report names no run that supplied {label}"
        return list(dict.fromkeys(commits)), ""
    if not report.get("commit"):
        return [], "the report records no commit"
    return [report["commit"]], ""


def candidate_commits(repo: Path, named: list[str]) -> list[str]:
    """Every commit whose code may have computed a group known to come from between the
    commits ``named`` (full shas): the earliest, and each later one up to the latest that
    changed :data:`CODE_PATHS`."""
    named = list(dict.fromkeys(named))
    if len(named) == 1:
        return named
    base = _git(repo, "merge-base", "--octopus", *named)
    between = _git(repo, "rev-list", *named, "^" + base, "--", *CODE_PATHS).split()
    return list(dict.fromkeys([base, *named, *between]))


def _first_added(repo: Path, f: Path) -> str | None:
    try:
        out = _git(repo, "log", "--diff-filter=A", "--format=%H", "--", str(f)).split()
    except subprocess.CalledProcessError:
        return None
    return out[-1] if out else None


def probe(repo: Path, commit: str | None, baselines, tasks, lo: bool, tmp: Path) -> dict:
    """The digests at ``commit`` (None: today's code, :data:`TODAY`), in a subprocess whose
    PYTHONPATH is that commit's worktree (created under ``tmp`` and removed)."""
    pdir = tmp / "probe"
    pdir.mkdir(exist_ok=True)
    shutil.copy(Path(__file__).with_name("keys.py"), pdir / "_stamp_keys_today.py")
    (pdir / "_stamp_probe.py").write_text(_PROBE)
    wt = TODAY if commit is None else tmp / f"wt-{commit[:12]}"
    if commit is not None:
        _git(repo, "worktree", "add", "--detach", str(wt), commit)
    try:
        req = pdir / "request.json"
        req.write_text(json.dumps({"baselines": sorted(baselines), "tasks": sorted(tasks),
                                   "lo": lo, "root": str(wt)}))
        env = {**os.environ, "PYTHONPATH": f"{pdir}{os.pathsep}{wt}",
               "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
        r = subprocess.run([sys.executable, str(pdir / "_stamp_probe.py"), str(req)],
                           cwd=wt, env=env, capture_output=True, text=True)
        lines = r.stdout.strip().splitlines()
        if r.returncode or not lines:
            tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
            return {"import_error": f"probe exited {r.returncode}: {tail[:300]}"}
        return json.loads(lines[-1])
    finally:
        if commit is not None:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(wt)],
                           capture_output=True)
            subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True)


def digests_of(result: dict, key: dict) -> tuple[dict | None, str]:
    """The ``code``, ``init`` and ``data`` digests a probe result gives a group's key, or
    (None, why not): old code that could not be imported or run, or a data source other
    than the one the key names."""
    if "import_error" in result:
        return None, f"old code does not import: {result['import_error']}"
    opt = key.get("opt")
    code = result.get("lo") if opt in ("lo", "lo-init") else result["baselines"].get(opt)
    if not isinstance(code, str):
        return None, f"old code digest of {opt}: {(code or {}).get('error', 'missing')}"
    t = result["tasks"].get(key["task"])
    if not isinstance(t, dict) or "error" in t:
        return None, f"old task {key['task']}: {(t or {}).get('error', 'missing')}"
    if t["source"] != key.get("source"):
        return None, f"old code's data source {t['source']!r} is not the key's {key.get('source')!r}"
    return {"code": code, "init": t["init"], "data": t["data"]}, ""


def _what(key: dict) -> str:
    return f"{key.get('opt')} on {key.get('task')} ({key.get('steps')} steps)"


def stamp_dir(cells: Path, commit: str | None = None, dry_run: bool = False,
              log=print) -> list[Outcome]:
    """Stamps every group file in ``cells`` whose key lacks digests (see the module
    docstring); ``commit``: the computing commit of every group (instead of the report's).
    Returns one :class:`Outcome` per file, in file-name order."""
    cells = Path(cells).resolve()
    try:
        repo = Path(_git(cells, "rev-parse", "--show-toplevel"))
    except subprocess.CalledProcessError:
        raise SystemExit(f"eval.stamp: {cells} is not in a git repository") from None
    rpath = cells.parent / "results.json"
    report = json.loads(rpath.read_text()) if rpath.is_file() else None
    forced = None
    if commit is not None:
        forced = _full(repo, commit)
        if forced is None:
            raise SystemExit(f"eval.stamp: {commit} is not a commit of {repo}")
    outcomes, plan = [], []      # plan: (file, group, candidates, named commit)
    for f in sorted(cells.glob("*.json")):
        try:
            group = json.loads(f.read_text())
            key = group["key"]
            assert isinstance(key, dict) and "losses" in group
        except Exception:
            outcomes.append(Outcome(f.name, "?", "skipped", "not a cached group"))
            continue
        if all(k in key for k in DIGESTS):
            outcomes.append(Outcome(f.name, _what(key), "has digests"))
            continue
        problem = group_problem(group, key)
        if problem or f.name != group_file_name(key):
            # e.g. a joined sweep that older code stored with its first part's key
            outcomes.append(Outcome(f.name, _what(key), "skipped", "not the group of its "
                                    f"stored key ({problem or 'its file name is another key'})"))
            continue
        if forced:
            named, why = [forced], ""
        else:
            named, why = report_commits(report, key)
            full = [_full(repo, c) for c in named]
            if None in full:
                named, why = [], f"report commit(s) {', '.join(named)} not in this repository"
            named = [c for c in full if c]
            added = _first_added(repo, f)
            if named and added:
                named.append(added)
        if not named:
            outcomes.append(Outcome(f.name, _what(key), "skipped", why))
            continue
        plan.append((f, group, candidate_commits(repo, named), named[0]))
    if plan:
        needs: dict[str, tuple[set, set, bool]] = {}
        for _, g, cands, _ in plan:
            for c in cands + [None]:        # None: today's working tree
                b, t, lo = needs.setdefault(c, (set(), set(), False))
                opt = g["key"].get("opt")
                if opt in ("lo", "lo-init"):
                    needs[c] = (b, t, True)
                else:
                    b.add(opt)
                t.add(g["key"]["task"])
        results = {}
        with tempfile.TemporaryDirectory(prefix="eval-stamp-", dir="/tmp") as tmp:
            for i, (c, (b, t, lo)) in enumerate(needs.items()):
                log(f"digests at {c[:9] if c else 'today'} ({i + 1}/{len(needs)}) ...")
                results[c] = probe(repo, c, b, t, lo, Path(tmp))
        for f, group, cands, named in plan:
            outcomes.append(_stamp_one(f, group, cands, named, results, dry_run))
    outcomes.sort(key=lambda o: o.file)
    return outcomes


def _stamp_one(f: Path, group: dict, cands: list[str], named: str, results: dict,
               dry_run: bool) -> Outcome:
    key = group["key"]
    got = {}
    for c in cands:
        d, why = digests_of(results[c], key)
        if d is None:
            return Outcome(f.name, _what(key), "skipped", f"at {c[:9]}: {why}")
        got[c] = d
    if len({json.dumps(d, sort_keys=True) for d in got.values()}) > 1:
        differ = sorted({k for d in got.values() for k in DIGESTS if d[k] != got[cands[0]][k]})
        return Outcome(f.name, _what(key), "skipped",
                       f"digests ({', '.join(differ)}) differ between the candidate commits "
                       + ", ".join(c[:9] for c in cands))
    digests = got[cands[0]]
    today, _ = digests_of(results[None], key)
    stale = tuple(k for k in DIGESTS if today is None or today[k] != digests[k])
    loops = {results[c].get("loop") if isinstance(results[c].get("loop"), str) else None
             for c in cands}
    loop_now = results[None].get("loop")
    loop_changed = (None if None in loops or not isinstance(loop_now, str)
                    else loops != {loop_now})
    stamped_key = {**key, **digests}
    new = group_file_name(stamped_key)
    out = Outcome(f.name, _what(key), "stamped", commit=named, new_file=new,
                  reusable=not stale, stale_in=stale, loop_changed=loop_changed)
    if dry_run:
        return out
    doc = {**{k: v for k, v in group.items() if k != "key"}, "key": stamped_key,
           "stamped_from": named}
    if len(cands) > 1:
        doc["stamp_checked"] = cands     # every commit that may have computed it: same digests
    target = f.with_name(new)
    if target.exists() and target != f:
        return Outcome(f.name, _what(key), "skipped", f"{new} exists already")
    tmp = target.with_name(target.name + ".stamp.tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(target)
    if target != f:
        f.unlink()
    return out


def summary(outcomes: list[Outcome]) -> str:
    """The counts: stamped and reusable today, stamped but stale, skipped (by reason)."""
    st = [o for o in outcomes if o.status == "stamped"]
    reuse = sum(bool(o.reusable) for o in st)
    sk = [o for o in outcomes if o.status == "skipped"]
    lines = [f"{len(outcomes)} files: {len(st)} stamped ({reuse} reusable today, "
             f"{len(st) - reuse} stale), {len(sk)} skipped, "
             f"{sum(o.status == 'has digests' for o in outcomes)} already with digests"]
    if any(o.loop_changed for o in st):
        lines.append(f"  note: {sum(bool(o.loop_changed) for o in st)} stamped groups ran an "
                     "inner training loop (meta_train.inner.train) that differs from today's; "
                     "no key holds it (SUITE_VERSION covers the loop)")
    reasons: dict[str, int] = {}
    for o in sk:
        reasons[o.reason] = reasons.get(o.reason, 0) + 1
    lines += [f"  skipped {n}: {r}" for r, n in reasons.items()]
    return "\n".join(lines)


def line(o: Outcome) -> str:
    """One line saying what became of a group file."""
    if o.status == "stamped":
        re = "yes" if o.reusable else f"no ({', '.join(o.stale_in)} differ)"
        return (f"{o.file} {o.what}: stamped from {o.commit[:9]} -> {o.new_file}; "
                f"reusable today: {re}")
    if o.status == "skipped":
        return f"{o.file} {o.what}: skipped: {o.reason}"
    return f"{o.file} {o.what}: has digests, left alone"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m eval.stamp",
        description="Stamp cached groups that predate code/init/data digests with the "
                    "digests of the commit that computed them (see docs/eval-cache.md).")
    p.add_argument("cells", type=Path, help="a cells directory (<report>/cells) in a git "
                   "repository; its report is <report>/results.json")
    p.add_argument("--commit", help="the commit that computed every group in CELLS "
                   "(default: the report's run commits and the commit that added each file)")
    p.add_argument("--dry-run", action="store_true",
                   help="compute and print what would be stamped; write nothing")
    a = p.parse_args(argv)
    if not a.cells.is_dir():
        p.error(f"{a.cells} is not a directory")
    outcomes = stamp_dir(a.cells, commit=a.commit, dry_run=a.dry_run,
                         log=lambda s: print(s, file=sys.stderr, flush=True))
    for o in outcomes:
        print(line(o))
    print(summary(outcomes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
