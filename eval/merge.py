"""One report from several runs of the same suite for the same learned optimizers.

Cells of a suite can run in different sessions, on different machines, or in separate
processes pinned to separate cores (one ``--out`` each). This joins their ``results.json``
into one document and writes the usual report from it (results.json, results.csv, report.md,
plots, TensorBoard); nothing is retrained.

    python -m eval.merge checkpoints/eval-full-lm runs/eval-lm-d256 --out runs/eval-lm

One run alone is re-rendered: its report written again by this version's report code (e.g.
after the report gained a column), naming the commit and command that computed its rows.

The runs must agree on what a number means: the suite, the learned optimizers (label and
theta digest), the report seeds and every suite setting except which cells ran and the
μTransfer limits (each row records the width its LR came from); a setting a run predates
counts at its off value. Rows are merged one by one: a row (an optimizer on a cell) that more
than one run holds is taken from the last run listed, and speedups are recomputed where a
cell's rows come from several runs. The report names each run that supplied rows, with its
command, commit and the rows it supplied.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from meta_train.tasks import TaskName

# suite settings that only choose which cells run, or whose effect each row records (the LR
# a μTransfer row took and the width it came from): they may differ between merged runs
CELL_SETTINGS = ("axes", "wider", "transformer", "lowrank", "other_data", "in_distribution",
                 "deeper", "longer", "mutransfer_above", "lm_mutransfer_above_d", "cells",
                 "base_width")


class MergeError(ValueError):
    """The runs cannot be joined into one report (missing, unreadable or incompatible)."""


def load(path: str | Path) -> dict:
    """A run's results document: ``path`` is its output directory or its results.json."""
    path = Path(path)
    f = path / "results.json" if path.is_dir() else path
    if not f.is_file():
        raise MergeError(f"{f} not found; give a suite output directory "
                         "(`python -m eval --out DIR`) or its results.json")
    try:
        doc = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MergeError(f"{f}: not valid JSON ({e})") from None
    except OSError as e:
        raise MergeError(f"{f}: cannot be read ({e.strerror})") from None
    if not isinstance(doc, dict) or "cells" not in doc or "los" not in doc:
        raise MergeError(f"{f}: not the results.json of a suite run (no cells or los)")
    return doc


def _los(doc: dict) -> list[tuple[str, str]]:
    try:
        return [(lo["label"], lo["digest"]) for lo in doc["los"]]
    except (KeyError, TypeError) as e:
        raise MergeError(f"a run's results.json has a learned optimizer without {e}; it is not "
                         "the output of `python -m eval`") from None


def _settings(doc: dict) -> dict:
    """A run's suite settings; one it predates at its off value (the ``SuiteSpec`` default),
    which is how that run behaved."""
    from eval.suite import SuiteSpec
    from meta_train.config import fill_absent
    return fill_absent(doc.get("spec", {}), SuiteSpec)


def _order(suite: str) -> tuple[list[str], dict[str, list[str]]]:
    """The suite's axes, and its fixed cells per axis, in the order its reports list them."""
    from eval.suite import AXES, SUITES
    spec = SUITES.get(suite)
    fixed = ({"transformer": list(spec.transformer), "transformer-lowrank": list(spec.lowrank),
              "other-data": list(spec.other_data)} if spec else {})
    for axis, task, _ in (spec.cells if spec else ()):
        fixed.setdefault(axis, []).append(task)
    return list(AXES), fixed


def merge(docs: list[dict], sources: list[str] | None = None, union: bool = False) -> dict:
    """One results document from ``docs``, row by row: a row (an optimizer on a cell) several
    runs hold comes from the last of them. Axes and cells follow the suite's order.

    ``sources``: a name for each document (its path); the result's ``merged_from`` lists each
    run that supplied a row, with its command, commit, host and the rows it supplied.
    One document alone is rewritten as it is, with the run it came from in ``merged_from``:
    an old report re-rendered by today's report code (a new column, a new mark) keeps the
    commit and command that computed its rows.
    ``union``: the runs may evaluate different learned optimizers (a label must name one
    theta digest in every run) and differ in suite settings; each run in ``merged_from``
    then records the settings in which it departs from the first run, so every row states
    how it was computed (one page of every current cell, e.g. ``checkpoints/results``).

    Raises:
      MergeError: no document, or two that differ in suite, learned optimizers,
        report seeds or a suite setting other than which cells ran (a setting a run predates
        counts at its off value).
    """
    if not docs:
        raise MergeError("give at least one run to merge")
    sources = sources or [f"run {i + 1}" for i in range(len(docs))]
    _check_mergeable(docs, sources, union)
    cells, runs = _join_cells(docs, sources)
    ref = _settings(docs[0])
    for r in runs:
        spec = r.pop("spec", None)
        if union and spec is not None:
            r["settings"] = {k: v for k, v in spec.items()
                             if k not in CELL_SETTINGS and ref.get(k) != v}
    axes, fixed = _order(docs[0].get("suite"))
    merged = _in_suite_order(cells, axes, fixed)
    for c in merged:
        _speedups(c)
    merged_from = _rows_by_run(merged, runs)
    have_cell = {(c["axis"], c["task"]) for c in merged}
    have_row = {(c["axis"], c["task"], c["steps"], n) for c in merged for n in c["optimizers"]}
    skipped = list({(s["axis"], s["task"]): s for d in docs for s in d.get("skipped", [])
                    if (s["axis"], s["task"]) not in have_cell}.values())
    not_run = list({(n["axis"], n["task"], n["steps"], n["optimizer"]): n
                    for d in docs for n in d.get("not_run", [])
                    if (n["axis"], n["task"], n["steps"], n["optimizer"]) not in have_row
                    }.values())
    first = {k: v for k, v in docs[0].items() if k != "shard"}   # the merge is no one shard
    if union:
        los: dict[str, dict] = {}
        for d in docs:
            for lo in d["los"]:
                los.setdefault(lo["label"], lo)
        first["los"] = list(los.values())
    return {**first, "spec": _merged_spec(docs, axes, fixed), "cells": merged,
            "baselines": list(dict.fromkeys(b for d in docs for b in d.get("baselines", []))),
            "skipped": skipped,
            **({"not_run": not_run} if any("not_run" in d for d in docs) else {}),
            "merged_from": merged_from}


def _check_mergeable(docs: list[dict], sources: list[str], union: bool) -> None:
    first, ref = docs[0], _settings(docs[0])
    digests: dict[str, tuple[str, str]] = {}       # label -> (digest, the run naming it)
    for doc, src in zip(docs, sources):
        for label, digest in _los(doc):
            seen = digests.setdefault(label, (digest, src))
            if union and seen[0] != digest:
                raise MergeError(f"{src} and {seen[1]} label different learned optimizers "
                                 f"{label!r} (theta digests {digest}, {seen[0]}); rerun one "
                                 "with --lo OTHER_LABEL=PATH (cached groups are reused)")
    for doc, src in zip(docs[1:], sources[1:]):
        if doc.get("suite") != first.get("suite"):
            raise MergeError(f"{src} ran suite {doc.get('suite')!r}, {sources[0]} ran "
                             f"{first.get('suite')!r}; merge runs of one suite")
        if doc.get("report_seeds") != first.get("report_seeds"):
            raise MergeError(f"{src} reports seeds {doc.get('report_seeds')}, {sources[0]} "
                             f"{first.get('report_seeds')}; rerun one with the other's --seeds")
        if union:
            continue
        if _los(doc) != _los(first):
            raise MergeError(f"{src} evaluated {_los(doc)}, {sources[0]} {_los(first)} (label, "
                             "theta digest); merge runs of the same learned optimizers, listed "
                             "in the same order")
        mine = _settings(doc)
        diff = sorted(k for k in set(ref) | set(mine)
                      if k not in CELL_SETTINGS and ref.get(k) != mine.get(k))
        if diff:
            raise MergeError(f"{src} and {sources[0]} differ in suite setting(s) "
                             + ", ".join(f"{k} ({mine.get(k)!r} vs {ref.get(k)!r})"
                                         for k in diff)
                             + "; their numbers are not comparable")


def _join_cells(docs: list[dict], sources: list[str]) -> tuple[dict, list[dict]]:
    """Every run's cells joined row by row (a later run's row wins), each row tagged with the
    index of its run in the returned run list; raises MergeError for a cell whose rows were
    computed on different data."""
    runs: list[dict] = []
    cells: dict[tuple, dict] = {}
    data: dict[tuple, str] = {}         # (cell, run) -> the data the run's cell trained on
    for doc, src in zip(docs, sources):
        base = len(runs)
        runs += _provenance(doc, src)
        for c in doc["cells"]:
            k = (c["axis"], c["task"], c["steps"])
            cell = cells.setdefault(k, {**c, "optimizers": {}})
            for n, o in c["optimizers"].items():
                cell["optimizers"][n] = {**o, "run": base + o.get("run", 0)}  # later wins
                data[k, base + o.get("run", 0)] = c.get("source") or ""
                if not doc.get("full_mean_curves"):     # written with 6-digit curves
                    cell["optimizers"][n]["mean_curve_rounded"] = True
            if c.get("source"):
                cell["source"] = c["source"]
    for k, cell in cells.items():
        _same_data(k, cell, data, runs)
    return cells, runs


def _in_suite_order(cells: dict, axes: list, fixed: dict) -> list[dict]:
    """The cells in the suite's order: by axis, then a fixed axis's own order, else width and
    steps, else first appearance."""
    seen = list(cells)
    inf = float("inf")

    def place(k):
        axis, task, steps = k
        pos = fixed.get(axis, [])
        try:
            width = TaskName.parse(task).width or 0
        except ValueError:          # a name this version does not know: unordered
            width = 0
        return (axes.index(axis) if axis in axes else inf,
                pos.index(task) if task in pos else inf,
                width if axis not in fixed else 0, steps, seen.index(k))
    return [cells[k] for k in sorted(seen, key=place)]


def _rows_by_run(merged: list[dict], runs: list[dict]) -> list[dict]:
    """The runs that supplied a row, renumbered (rows' ``run`` too), each with the rows it
    supplied."""
    used = sorted({o["run"] for c in merged for o in c["optimizers"].values()})
    renum = {r: i for i, r in enumerate(used)}
    merged_from = []
    for r in used:
        parts = []
        for c in merged:
            mine = [n for n, o in c["optimizers"].items() if o["run"] == r]
            if mine:
                label = f"{c['task']} ({c['steps']} steps)"
                parts.append(label if len(mine) == len(c["optimizers"])
                             else f"{label}: {', '.join(mine)}")
        merged_from.append({**runs[r], "cells": parts})
    for c in merged:
        for o in c["optimizers"].values():
            o["run"] = renum[o["run"]]
    return merged_from


def _merged_spec(docs: list[dict], axes: list, fixed: dict) -> dict:
    """The latest run's suite settings, with the cell lists (fixed cells, axes, widths, LM
    tasks) the union of every run's, in the suite's order."""
    inf = float("inf")
    spec = {k: v for d in docs for k, v in d.get("spec", {}).items()}   # the latest's
    for k, axis in (("transformer", "transformer"), ("lowrank", "transformer-lowrank"),
                    ("other_data", "other-data")):
        vals = list(dict.fromkeys(v for d in docs for v in d.get("spec", {}).get(k, ()) or ()))
        if k in spec or vals:
            pos = fixed.get(axis, [])
            spec[k] = sorted(vals, key=lambda t: (pos.index(t) if t in pos else inf,
                                                  vals.index(t)))
    spec["axes"] = sorted({a for d in docs for a in d.get("spec", {}).get("axes", ())},
                          key=lambda a: axes.index(a) if a in axes else inf)
    spec["wider"] = sorted({w for d in docs for w in d.get("spec", {}).get("wider", ())})
    spec["cells"] = list(dict.fromkeys(tuple(c) for d in docs
                                       for c in d.get("spec", {}).get("cells", ()) or ()))
    return spec


def _same_data(k: tuple, cell: dict, data: dict, runs: list[dict]) -> None:
    """Raises MergeError when a merged cell's rows were computed on different data: their runs'
    data sources differ, or their rows' data digests do (``data_digest``, recorded by suites
    whose cache keys hold it)."""
    by_run = {o["run"]: data[k, o["run"]] for o in cell["optimizers"].values()}
    sources = {s for s in by_run.values() if s}
    digests = {o["data_digest"] for o in cell["optimizers"].values() if o.get("data_digest")}
    if len(sources) > 1 or len(digests) > 1:
        what = (" and ".join(f"{runs[r]['source']} on {s!r}" for r, s in by_run.items() if s)
                if len(sources) > 1 else f"data digests {sorted(digests)}")
        raise MergeError(f"cell {k[1]} ({k[2]} steps): rows computed on different data "
                         f"({what}); merge runs on the same data, or rerun the cell on one")


def _speedups(c: dict) -> None:
    """A merged cell's speedups against its AdamW row: a row from the AdamW row's run keeps
    the speedup its suite computed from full-precision curves; a row from another run is
    recomputed from the stored mean curves, marked ``speedup_from_rounded_curves`` where
    either curve was stored rounded to 6 digits (``mean_curve_rounded``: documents written
    before results.json kept full precision)."""
    from eval.suite import speedup
    adamw = c["optimizers"].get("adamw", c["optimizers"].get("adamw-cosine"))
    if adamw is None:
        return
    for o in c["optimizers"].values():
        if o["run"] == adamw["run"]:
            continue
        o["speedup_vs_adamw"] = speedup(adamw["mean_curve"], o["mean_curve"])
        o.pop("speedup_from_rounded_curves", None)
        if o.get("mean_curve_rounded") or adamw.get("mean_curve_rounded"):
            o["speedup_from_rounded_curves"] = True


def missing_shards(docs: list[dict]) -> list[str]:
    """The shards (``i/n``, from ``python -m eval --shard``) of a split the runs name but do
    not all include."""
    have = [tuple(map(int, d["shard"].split("/"))) for d in docs if d.get("shard")]
    return [f"{i}/{n}" for n in sorted({n for _, n in have}) for i in range(n)
            if (i, n) not in have]


def _provenance(doc: dict, source: str) -> list[dict]:
    """The runs a document's rows were computed by: its own run, or, for an earlier merge,
    the runs it was merged from (its rows' ``run`` indices point into that list)."""
    if doc.get("merged_from"):
        return [{k: v for k, v in m.items() if k != "cells"} for m in doc["merged_from"]]
    return [{"source": source, "command": doc.get("command"), "commit": doc.get("commit"),
             "host": doc.get("host"), "spec": _settings(doc)}]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m eval.merge",
        description="Join several runs of one suite for the same learned optimizers (cells run "
                    "in different sessions, on different machines or in processes pinned to "
                    "different cores) into one report: results.json, results.csv, report.md, "
                    "plots, TensorBoard. Nothing is retrained; a row (an optimizer on a cell) "
                    "several runs hold comes from the last one listed. One run alone is "
                    "re-rendered by this version's report code, keeping the commit and "
                    "command that computed it.")
    ap.add_argument("runs", nargs="+", help="suite output directories (or their results.json)")
    ap.add_argument("--out", required=True, help="output directory of the merged report")
    ap.add_argument("--union", action="store_true",
                    help="runs of one suite that evaluated different learned optimizers or "
                         "ran with other suite settings: one page of every cell, each run "
                         "listed with its commit, command and the settings in which it departs "
                         "from the first run (e.g. checkpoints/results)")
    args = ap.parse_args(argv)
    from eval.report import OutError, check_out, publish
    try:
        check_out(Path(args.out), create=False)
        docs = [load(r) for r in args.runs]
        doc = merge(docs, list(args.runs), union=args.union)
        check_out(Path(args.out))
    except (MergeError, OutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    missing = missing_shards(docs)
    if missing:
        print(f"note: shard(s) {', '.join(missing)} are not among the runs; the report lacks "
              "their cells", file=sys.stderr)
    publish(doc, Path(args.out), "python -m eval.merge " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
