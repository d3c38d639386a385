"""One report from several runs of the same suite for the same learned optimizers.

Cells of a suite can run in different sessions, on different machines, or in separate
processes pinned to separate cores (one ``--out`` each). This joins their ``results.json``
into one document and writes the usual report from it (results.json, results.csv, report.md,
plots, TensorBoard); nothing is retrained.

    python -m eval.merge checkpoints/eval-full-lm runs/eval-lm-d256 --out runs/eval-lm

The runs must agree on what a number means: the suite, the learned optimizers (label and
theta digest), the report seeds and every suite setting except which cells ran. A cell that
more than one run holds is taken from the last run listed. The report names each source run's
command and commit.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

# suite settings that only choose which cells run, or whose effect each row records (the LR
# a μTransfer row took and the width it came from): they may differ between merged runs
CELL_SETTINGS = ("axes", "wider", "transformer", "lowrank", "other_data", "in_distribution",
                 "deeper", "longer", "mutransfer_above", "lm_mutransfer_above_d")


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
    except json.JSONDecodeError as e:
        raise MergeError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or "cells" not in doc or "los" not in doc:
        raise MergeError(f"{f}: not the results.json of a suite run (no cells or los)")
    return doc


def _los(doc: dict) -> list[tuple[str, str]]:
    return [(lo["label"], lo["digest"]) for lo in doc["los"]]


def merge(docs: list[dict], sources: list[str] | None = None) -> dict:
    """One results document from ``docs`` (in order; a cell several hold comes from the last).

    ``sources``: a name for each document (its path), recorded with its command and commit.

    Raises:
      MergeError: fewer than two documents, or two that differ in suite, learned optimizers,
        report seeds or a suite setting other than which cells ran.
    """
    if len(docs) < 2:
        raise MergeError("give at least two runs to merge")
    sources = sources or [f"run {i + 1}" for i in range(len(docs))]
    first = docs[0]
    for doc, src in zip(docs[1:], sources[1:]):
        if doc.get("suite") != first.get("suite"):
            raise MergeError(f"{src} ran suite {doc.get('suite')!r}, {sources[0]} ran "
                             f"{first.get('suite')!r}; merge runs of one suite")
        if _los(doc) != _los(first):
            raise MergeError(f"{src} evaluated {_los(doc)}, {sources[0]} {_los(first)} (label, "
                             "theta digest); merge runs of the same learned optimizers, listed "
                             "in the same order")
        if doc.get("report_seeds") != first.get("report_seeds"):
            raise MergeError(f"{src} reports seeds {doc.get('report_seeds')}, {sources[0]} "
                             f"{first.get('report_seeds')}; rerun one with the other's --seeds")
        a, b = first.get("spec", {}), doc.get("spec", {})
        # a setting only one run has came after the other run's version: not a difference
        diff = sorted(k for k in set(a) & set(b)
                      if k not in CELL_SETTINGS and a[k] != b[k])
        if diff:
            raise MergeError(f"{src} and {sources[0]} differ in suite setting(s) "
                             + ", ".join(f"{k} ({b.get(k)!r} vs {a.get(k)!r})" for k in diff)
                             + "; their numbers are not comparable")
    cells: dict[tuple, dict] = {}
    for doc in docs:
        for c in doc["cells"]:
            cells[(c["axis"], c["task"], c["steps"])] = c       # the later run's cell wins
    order = {}
    for doc in docs:          # axes in first-seen order, cells in first-seen order within
        for c in doc["cells"]:
            order.setdefault(c["axis"], []).append((c["axis"], c["task"], c["steps"]))
    merged = [cells[k] for axis in order for k in dict.fromkeys(order[axis])]
    spec = {k: v for d in docs for k, v in d.get("spec", {}).items()}   # the latest's
    for k in ("transformer", "lowrank", "other_data", "axes", "wider"):
        vals = [v for d in docs for v in d.get("spec", {}).get(k, ()) or ()]
        if k in spec or vals:
            spec[k] = list(dict.fromkeys(vals))
    return {**first, "spec": spec, "cells": merged,
            "baselines": list(dict.fromkeys(b for d in docs for b in d.get("baselines", []))),
            "skipped": [s for d in docs for s in d.get("skipped", [])],
            **({"not_run": [n for d in docs for n in d.get("not_run", [])]}
               if any("not_run" in d for d in docs) else {}),
            "merged_from": [m for d, s in zip(docs, sources) for m in _provenance(d, s)]}


def _provenance(doc: dict, source: str) -> list[dict]:
    """Where a document's cells were computed: its own run, or, for an earlier merge, the
    runs it was merged from."""
    if doc.get("merged_from"):
        return list(doc["merged_from"])
    return [{"source": source, "command": doc.get("command"), "commit": doc.get("commit"),
             "host": doc.get("host"),
             "cells": [f"{c['task']} ({c['steps']} steps)" for c in doc["cells"]]}]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m eval.merge",
        description="Join several runs of one suite for the same learned optimizers (cells run "
                    "in different sessions, on different machines or in processes pinned to "
                    "different cores) into one report: results.json, results.csv, report.md, "
                    "plots, TensorBoard. Nothing is retrained; a cell several runs hold comes "
                    "from the last one listed.")
    ap.add_argument("runs", nargs="+", help="suite output directories (or their results.json)")
    ap.add_argument("--out", required=True, help="output directory of the merged report")
    args = ap.parse_args(argv)
    from eval.report import write_all
    try:
        doc = merge([load(r) for r in args.runs], list(args.runs))
    except MergeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    rep = write_all(doc, out, "python -m eval.merge " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])))
    print(rep["markdown"])
    print(f"wrote {out}/report.md, results.json, results.csv, tb/ (TensorBoard), "
          + ", ".join(rep["plots"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
