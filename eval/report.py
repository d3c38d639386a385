"""Reports of a suite run: results.json, results.csv, report.md and PNG plots."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import numpy as np


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_all(doc: dict, out: Path, command: str) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = dict(doc, commit=_commit(), command=command)
    (out / "results.json").write_text(json.dumps(doc))
    rows = []
    for c in doc["cells"]:
        for name, o in c["optimizers"].items():
            rows.append({"axis": c["axis"], "task": c["task"], "steps": c["steps"],
                         "optimizer": name, "lr": o.get("lr", ""),
                         "final_train_loss_mean": o["final_mean"],
                         "final_train_loss_std": o["final_std"],
                         "test_loss_mean": float(np.mean(o["test_loss"])),
                         "test_accuracy_mean": float(np.mean(o["test_accuracy"])),
                         "diverged": o["diverged"],
                         "speedup_vs_adamw": o.get("speedup_vs_adamw", "")})
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plots = _plots(doc, out)
    md = markdown(doc, plots)
    (out / "report.md").write_text(md)
    return {"markdown": md, "plots": plots}


def markdown(doc: dict, plots: list[str]) -> str:
    lo = doc["lo"]
    lines = [f"# Generalization suite `{doc['suite']}`", "",
             f"- learned optimizer: `{lo['path']}` ({lo['config']['name'] if 'name' in lo['config'] else ('mulo' if lo['config']['mup'] else 'sp-lo')}, meta-step {lo['meta_step']})",
             f"- meta-training tasks: {', '.join(lo['meta_config']['tasks'])}; horizon "
             f"{lo['meta_config']['es']['min_horizon']}-{lo['meta_config']['es']['max_horizon']}",
             f"- commit `{doc['commit']}`; command: `{doc['command']}`",
             f"- baselines tuned on seed 0 over a log LR grid; reported on seeds "
             f"{doc['report_seeds']} (mean ± std of final train loss = mean of last 5% of steps; "
             "lower is better; best per row in bold; † = a run diverged)", ""]
    axes = []
    for c in doc["cells"]:
        if c["axis"] not in axes:
            axes.append(c["axis"])
    for axis in axes:
        cells = [c for c in doc["cells"] if c["axis"] == axis]
        names = list(cells[0]["optimizers"])
        lines += [f"## {axis}", "", "| task | steps | " + " | ".join(names) + " |",
                  "|---|---:|" + "---:|" * len(names)]
        for c in cells:
            best = min(c["optimizers"][n]["final_mean"] for n in names)
            cols = []
            for n in names:
                o = c["optimizers"][n]
                s = f"{o['final_mean']:.3f} ± {o['final_std']:.3f}" + (" †" if o["diverged"] else "")
                cols.append(f"**{s}**" if o["final_mean"] == best else s)
            lines.append(f"| {c['task']} | {c['steps']} | " + " | ".join(cols) + " |")
        lines += ["", "Speedup vs tuned AdamW (steps AdamW needs for its final loss / steps "
                  "the optimizer needs; 0 = never reaches it):", "",
                  "| task | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for c in cells:
            lines.append(f"| {c['task']} | " + " | ".join(
                f"{c['optimizers'][n].get('speedup_vs_adamw', float('nan')):.2f}"
                for n in names) + " |")
        lines.append("")
    lines += ["Tuned learning rates: " + "; ".join(
        f"{c['task']}: " + ", ".join(f"{n}={o['lr']:.3g}" for n, o in c["optimizers"].items()
                                      if "grid" in o) for c in doc["cells"]), ""]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _plots(doc: dict, out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    cells = doc["cells"]
    n = len(cells)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axs = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, c in zip(axs.ravel(), cells):
        for name, o in c["optimizers"].items():
            curve = np.asarray(o["mean_curve"])
            k = max(1, len(curve) // 100)
            sm = np.convolve(curve, np.ones(k) / k, mode="valid")
            ax.plot(np.arange(len(sm)) + k, sm, label=name, lw=1.4)
        ax.set_title(f"{c['axis']}: {c['task']}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("train loss")
        ax.set_yscale("log")
    for ax in axs.ravel()[n:]:
        ax.axis("off")
    axs.ravel()[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=110)
    plt.close(fig)
    files.append("loss_curves.png")

    width_cells = [c for c in cells if c["axis"] in ("in-distribution", "wider")
                   and re.search(r"-w(\d+)", c["task"])]
    if width_cells:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        names = list(width_cells[0]["optimizers"])
        for name in names:
            pts = sorted((int(re.search(r"-w(\d+)", c["task"])[1]),
                          c["optimizers"][name]["final_mean"]) for c in width_cells)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width")
        ax.set_ylabel("final train loss")
        ax.set_title("final loss vs width")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "final_loss_vs_width.png", dpi=110)
        plt.close(fig)
        files.append("final_loss_vs_width.png")
    return files
