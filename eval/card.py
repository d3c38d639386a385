"""Package a finished meta-training run as a shipped checkpoint with a model card.

It lives in ``eval`` because a card renders eval results (``eval.report``'s tables); the
meta-training side stays free of ``eval`` imports.

``python -m eval.card --run runs/cpu-mulo --name mulo-cpu [--eval runs/cpu-eval ...]``
writes ``checkpoints/<name>/``: ``lopt.json`` (theta + config), ``MODEL_CARD.md`` (command,
config, commit, wall time, hardware, meta-loss curve, eval summary), ``meta_loss.png`` and
``training_log.csv`` (the meta-loss / validation scalars that TensorBoard shows).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

from eval.report import UNTRAINED, loss_columns


def _metrics(run: Path) -> list[dict]:
    rows = []
    with open(run / "metrics.jsonl") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    # a resumed run re-logs steps after its last checkpoint: keep the last entry per step
    by_step = {r["step"]: r for r in rows}
    return [by_step[k] for k in sorted(by_step)]


def wall_time_s(run: Path, rows: list[dict]) -> float:
    """Meta-training wall time: from the first TensorBoard event file's creation to the last
    logged step (``time`` field, or the newest checkpoint's mtime for older runs)."""
    starts = [int(p.name.split(".")[3]) for p in (run / "tb").glob("events.out.tfevents.*")]
    start = min(starts) if starts else os.path.getmtime(run / "config.json")
    if rows and "time" in rows[-1]:
        end = rows[-1]["time"]
    else:
        end = max(os.path.getmtime(p) for p in (run / "checkpoints").rglob("*"))
    return float(end - start)


def _plot(rows, out: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = np.array([r["step"] for r in rows])
    ml = np.array([r["meta_loss"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(steps, ml, lw=0.6, alpha=0.4, label="meta-loss (train tasks)")
    k = max(1, len(ml) // 50)
    ax.plot(steps[k - 1:], np.convolve(ml, np.ones(k) / k, "valid"), lw=1.6,
            label=f"running mean ({k})")
    val = [(r["step"], r["val/meta_loss"]) for r in rows if "val/meta_loss" in r]
    if val:
        ax.plot(*zip(*val), "o-", label="validation meta-loss (held-out task)")
    ax.set_xlabel("outer step")
    ax.set_ylabel("normalized meta-loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _eval_summary(eval_dir: Path | None, labels: list[str]) -> list[str]:
    if eval_dir is None or not (eval_dir / "results.json").is_file():
        return ["(no eval run attached)"]
    doc = json.loads((eval_dir / "results.json").read_text())
    names = list(dict.fromkeys(n for c in doc["cells"] for n in c["optimizers"]
                               if not n.endswith(UNTRAINED) and n != "adamw@1e-3"))
    lines = [f"From `{doc['command']}` (commit `{doc['commit']}`, suite `{doc['suite']}`, "
             f"report seeds {doc['report_seeds']}): final train loss, mean ± std, lower is "
             f"better; baselines tuned per task on seed {doc.get('tuning_seed', 0)}; bold = "
             "best of the columns shown; "
             "† = a run diverged.", "",
             "| axis | task | steps | " + " | ".join(names) + " |",
             "|---|---|---:|" + "---:|" * len(names)]
    for c in doc["cells"]:
        lines.append(f"| {c['axis']} | {c['task']} | {c['steps']} | "
                     + " | ".join(loss_columns(c["optimizers"], names)) + " |")
    return lines


def _invocation(run: Path):
    f = run / "invocations.jsonl"
    if f.is_file():
        lines = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        if lines:
            return lines[0]
    return {}


def write_card(run: Path, name: str, dest_root: Path, eval_dirs=None,
               command: str | None = None, commit: str | None = None, note: str = ""
               ) -> Path:
    import lopt
    from lopt.io.provenance import commit as _commit, host
    theta, config, meta = lopt.load_theta(str(run))
    rows = _metrics(run)
    inv = _invocation(run)
    command = command or inv.get("command", "(not recorded)")
    commit = commit or inv.get("commit", "(not recorded)")
    dest = dest_root / name
    dest.mkdir(parents=True, exist_ok=True)
    lopt.save(dest, theta, config, dict(meta, name=name))
    _plot(rows, dest / "meta_loss.png")
    keys = ["step", "meta_loss", "grad_norm", "val/meta_loss", "val/final_train_loss",
            "val/final_test_loss"]
    with open(dest / "training_log.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for r in rows:
            w.writerow([r.get(k, "") for k in keys])
    cfg = json.loads((run / "config.json").read_text())
    wall = wall_time_s(run, rows)
    val = [r for r in rows if "val/meta_loss" in r]
    first, last = rows[0]["meta_loss"], float(np.mean([r["meta_loss"] for r in rows[-50:]]))
    if config.arch == "velo":
        variant = "μVeLO (μP)" if config.mup else "SP VeLO (standard parametrization)"
    else:
        variant = "μLO_M (μP)" if config.mup else "SP LO (standard parametrization)"
    md = [f"# `{name}`: {variant} learned optimizer", "",
          "```python", "import lopt",
          (f'opt = lopt.load("{name}", num_steps=T)   # T: the run\'s total number of '
           "updates; an optax GradientTransformation" if config.needs_num_steps else
           f'opt = lopt.load("{name}")   # an optax GradientTransformation'),
          "```", "",
          "## How it was made", "",
          f"- command: `{command}`",
          f"- commit: `{commit}` (card written at `{_commit()}`)",
          f"- hardware: {inv.get('host') or host() + ' (the machine that wrote this card)'}",
          f"- meta-training wall time: {wall / 60:.1f} min for {rows[-1]['step']} outer steps"
          + (f" ({note})" if note else ""),
          f"- tasks: {', '.join(cfg['tasks'])}; validation task `{cfg['validate_task']}`",
          f"- estimator: {cfg['es']['method'].upper()}, {cfg['es']['num_pairs']} antithetic "
          f"pairs per task, sigma {cfg['es']['sigma']}, truncations of "
          f"{cfg['es']['unroll_length']} steps, horizons {cfg['es']['min_horizon']}-"
          f"{cfg['es']['max_horizon']}",
          f"- meta-optimizer: AdamW, warmup {cfg['warmup_steps']} steps to {cfg['meta_lr']}, "
          f"cosine to {cfg['final_lr']}, global-norm clip {cfg['clip_norm']}, seed {cfg['seed']}",
          f"- LO: {json.dumps(config.to_dict())}", "",
          "## Meta-training", "",
          f"Meta-loss (training-batch loss / log(10), averaged over the truncation and the "
          f"population): {first:.3f} at step 1, {last:.3f} averaged over the last 50 steps.",
          ]
    if val:
        md.append("Validation on the held-out task: " + ", ".join(
            f"step {r['step']}: meta-loss {r['val/meta_loss']:.3f}, final train loss "
            f"{r['val/final_train_loss']:.3f}" for r in val) + ".")
    md += ["", "![meta-loss](meta_loss.png)", "", "`training_log.csv` holds the scalars "
           "TensorBoard showed for this run.", "", "## Evaluation", ""]
    eval_dirs = [Path(e) for e in (eval_dirs or [])]
    for i, e in enumerate(eval_dirs or [None]):
        if i:
            md.append("")
        md += _eval_summary(e, [])
    md += ["", "Full config:", "", "```json", json.dumps(cfg, indent=2), "```", ""]
    (dest / "MODEL_CARD.md").write_text("\n".join(md))
    return dest


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m eval.card", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="finished meta-training run directory")
    ap.add_argument("--note", default="", help="what else ran on the machine meanwhile, "
                    "printed next to the wall time")
    ap.add_argument("--name", required=True, help="name of the shipped checkpoint")
    ap.add_argument("--eval", action="append", default=[],
                    help="eval output directory to summarize (repeat for several)")
    ap.add_argument("--command", default=None,
                    help="the meta-training command (default: from <run>/invocations.jsonl)")
    ap.add_argument("--commit", default=None,
                    help="commit of the meta-training run (default: from invocations.jsonl)")
    ap.add_argument("--dest", default=str(Path(__file__).resolve().parent.parent /
                                          "checkpoints"), help="where checkpoints live")
    args = ap.parse_args(argv)
    import lopt
    try:
        d = write_card(Path(args.run), args.name, Path(args.dest),
                       args.eval, args.command, args.commit, args.note)
    except (lopt.CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {d}/lopt.json, MODEL_CARD.md, meta_loss.png, training_log.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
