"""A short terminal summary of a suite run (what ``make demo`` prints at its end).

Reads ``<run>/results.json`` and says in 5-10 lines what was trained and on which data, where
the first learned optimizer won and lost against tuned AdamW, AdamW at 1e-3 and the other
learned optimizers, and where the report and the TensorBoard logs are.

    python -m eval.summary runs/quick-eval
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# one definition each of divergence, the win rule and the tuned AdamW form: the report's
from eval.report import ADAMW_FORMS, beats as _compare, diverged as _diverged  # noqa: F401
from eval.report import peak_ratio, spiked, tuned_adamw

ADAMW_FIXED = "adamw@1e-3"
MAX_CELL_LINES = 6    # more cells than this are summarized per axis


class SummaryError(ValueError):
    """The directory holds no readable suite results."""


def load(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise SummaryError(f"{path} not found; run `python -m eval --out {run_dir} ...` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SummaryError(f"{path}: not valid JSON ({e})") from None


def _loss(o: dict) -> str:
    return f"{o['final_mean']:.3f}" + (" †" if _diverged(o) else " §" if spiked(o) else "")


def _tuned_adamw(opts: dict) -> tuple[str, dict] | None:
    """The better tuned AdamW form of a cell (``eval.report.tuned_adamw``) and its row."""
    name = tuned_adamw(opts)
    return None if name is None else (name, opts[name])


def _rivals(doc: dict, cell: dict, main: str) -> list[tuple[str, dict]]:
    opts = cell["optimizers"]
    out = []
    tuned = _tuned_adamw(opts)
    if tuned:
        out.append(("tuned AdamW", tuned[1]))
    if ADAMW_FIXED in opts:
        out.append(("AdamW 1e-3", opts[ADAMW_FIXED]))
    out += [(lo["label"], opts[lo["label"]]) for lo in doc["los"]
            if lo["label"] != main and lo["label"] in opts]
    return out


def _sources(doc: dict) -> list[str]:
    """The data sources the cells record; for documents that do not record them, the
    sources this machine gives the cells' tasks."""
    found = [c.get("source") for c in doc["cells"]]
    found += [o.get("source") for c in doc["cells"] for o in c["optimizers"].values()]
    found = [s for s in found if s]
    if not found:
        from meta_train.data import DataNotFoundError
        from meta_train.tasks import get_task
        for c in doc["cells"]:
            try:
                found.append(get_task(c["task"]).source)
            except (DataNotFoundError, ValueError):
                found.append(f"{c['task']}: data not on this machine")
    return list(dict.fromkeys(found))


def _short(task: str) -> str:
    return task.removeprefix("mlp-")


def summary(doc: dict, run_dir: str | Path) -> list[str]:
    """The summary lines of a results document (see the module docstring)."""
    run_dir = Path(run_dir)
    los = doc["los"]
    if not los or not doc["cells"]:
        raise SummaryError(f"{run_dir}/results.json holds no learned optimizer or no cells")
    main = los[0]["label"]
    trained = []
    for lo in los:
        mc = lo.get("meta_config") or {}
        es = mc.get("es", {})
        trained.append(f"{lo['label']} ({lo['path']}, {lo.get('meta_step')} meta-steps on "
                       f"{', '.join(_short(t) for t in mc.get('tasks', []))}, horizons "
                       f"{es.get('min_horizon')}-{es.get('max_horizon')})")
    lines = ["Trained: " + "; ".join(trained) + "."]
    seeds = doc.get("report_seeds", [])
    rival_names = [n for n, _ in _rivals(doc, doc["cells"][0], main)]
    lines.append(f"Final train loss on {'; '.join(_sources(doc))}, mean of seeds "
                 f"{','.join(map(str, seeds))} (lower is better, † diverged): {main} vs "
                 f"{' / '.join(rival_names)}:")
    wins = {n: [] for n in rival_names}
    cell_lines = []
    for c in doc["cells"]:
        o = c["optimizers"].get(main)
        if o is None:
            continue
        parts = []
        for name, r in _rivals(doc, c, main):
            won = _compare(o, r)
            wins.setdefault(name, []).append((c, won))
            parts.append(f"{_loss(r)} {'won' if won else 'lost'}")
        cell_lines.append(f"  {c['axis']:15s} {_short(c['task']):18s} {c['steps']:>6d} steps: "
                          f"{_loss(o)} vs " + " / ".join(parts))
    if len(cell_lines) <= MAX_CELL_LINES:
        lines += cell_lines
    else:
        axes = list(dict.fromkeys(c["axis"] for c in doc["cells"]))
        for axis in axes:
            lines.append(f"  {axis:15s} " + "; ".join(
                f"vs {n}: won {sum(w for c, w in res if c['axis'] == axis)} of "
                f"{sum(1 for c, _ in res if c['axis'] == axis)}" for n, res in wins.items()))
    tally = []
    for name, res in wins.items():
        won = [c for c, w in res if w]
        where = (" (" + ", ".join(f"{c['axis']} {_short(c['task'])}" for c in won) + ")"
                 if 0 < len(won) < len(res) and len(won) <= 3 else "")
        tally.append(f"{len(won)}/{len(res)} vs {name}{where}")
    lines.append(f"{main} won " + ", ".join(tally) + ".")
    unstable = [c for c in doc["cells"] if main in c["optimizers"]
                and spiked(c["optimizers"][main])]
    if unstable:
        from eval.suite import DIVERGED_RATIO
        lines.append(f"{main} was unstable mid-run (§: a seed's loss rose above "
                     f"{DIVERGED_RATIO}x its initial loss and came back) on " + ", ".join(
                         f"{c['axis']} {_short(c['task'])} (peak "
                         f"{peak_ratio(c['optimizers'][main]):.3g}x)" for c in unstable) + ".")
    meta_tb = [str(Path(lo["path"]) / "tb") for lo in los if (Path(lo["path"]) / "tb").is_dir()]
    eval_tb = str(run_dir / "tb")
    root = os.path.commonpath([os.path.abspath(d) for d in [eval_tb] + meta_tb])
    if Path(root).is_relative_to(Path.cwd()):
        root = os.path.relpath(root)
    lines.append(f"Report: {run_dir / 'report.md'} (tables, plots). TensorBoard: {eval_tb} "
                 f"(eval)" + (f", {', '.join(meta_tb)} (meta-training)" if meta_tb else "")
                 + f"; view with `tensorboard --logdir {root}`.")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m eval.summary",
        description="Print a 5-10 line summary of a suite run: what was trained on which "
                    "data, where the first learned optimizer won and lost against tuned AdamW, "
                    "AdamW at 1e-3 and the other learned optimizers, and where the report and "
                    "TensorBoard logs are.")
    ap.add_argument("run", help="output directory of `python -m eval` (holds results.json)")
    args = ap.parse_args(argv)
    try:
        print("\n".join(summary(load(args.run), args.run)))
    except SummaryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
