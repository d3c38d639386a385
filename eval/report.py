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


def _rounded_curves(doc: dict) -> dict:
    """The document with loss curves at 6 significant digits (float32 carries ~7): long-horizon
    suites hold 10^5 curve points, and full repr digits would triple the file for nothing.
    Summary numbers (final losses, accuracies) keep full precision."""
    cells = []
    for c in doc["cells"]:
        opts = {n: dict(o, mean_curve=[float(f"{x:.6g}") for x in o["mean_curve"]])
                for n, o in c["optimizers"].items()}
        cells.append(dict(c, optimizers=opts))
    return dict(doc, cells=cells)


def write_all(doc: dict, out: Path, command: str) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = dict(doc, commit=_commit(), command=command)
    (out / "results.json").write_text(json.dumps(_rounded_curves(doc)))
    rows = []
    for c in doc["cells"]:
        for name, o in c["optimizers"].items():
            rows.append({"axis": c["axis"], "task": o.get("task", c["task"]),
                         "steps": c["steps"], "optimizer": name, "lr": o.get("lr", ""),
                         "final_train_loss_mean": o["final_mean"],
                         "final_train_loss_std": o["final_std"],
                         "test_loss_mean": float(np.mean(o["test_loss"])),
                         "test_accuracy_mean": float(np.mean(o["test_accuracy"])),
                         "diverged": o["diverged"],
                         "speedup_vs_adamw": o.get("speedup_vs_adamw", ""),
                         "seconds_per_step": o.get("wall_s_per_step", "")})
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plots = _plots(doc, out)
    _tensorboard(doc, out / "tb")
    md = markdown(doc, plots)
    (out / "report.md").write_text(md)
    return {"markdown": md, "plots": plots}


def _overrides(doc: dict) -> list[str]:
    """A line naming where this run departs from its named suite (e.g. fewer widths)."""
    import dataclasses

    from eval.suite import SUITES
    if doc.get("suite") not in SUITES or "spec" not in doc:
        return []
    default = dataclasses.asdict(SUITES[doc["suite"]])
    diffs = [f"{k} = {_fmt(v)} (suite default {_fmt(default[k])})"
             for k, v in doc["spec"].items() if k in default and _fmt(v) != _fmt(default[k])]
    if "baselines" in doc and _fmt(doc["baselines"]) != _fmt(default["baselines"]):
        diffs.append(f"baselines = {_fmt(doc['baselines'])} (suite default "
                     f"{_fmt(default['baselines'])})")
    return [f"- departs from the `{doc['suite']}` suite: " + "; ".join(diffs)] if diffs else []


def _fmt(v) -> str:
    return ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def markdown(doc: dict, plots: list[str]) -> str:
    lines = [f"# Generalization suite `{doc['suite']}`", ""]
    for lo in doc["los"]:
        mc = lo["meta_config"] or {}
        lines.append(f"- **{lo['label']}**: `{lo['path']}` ({'μP' if lo['config']['mup'] else 'SP'}"
                     f", meta-step {lo['meta_step']}, theta digest {lo['digest']}); meta-trained "
                     f"on {', '.join(mc.get('tasks', []))}, horizons "
                     f"{mc.get('es', {}).get('min_horizon')}-{mc.get('es', {}).get('max_horizon')}")
    lines += [f"- commit `{doc['commit']}`; command: `{doc['command']}`",
              f"- baselines ({', '.join(doc['baselines'])}) tuned on seed 0 over a log LR grid; "
              f"everything reported on seeds {doc['report_seeds']}: mean ± std of the final "
              "train loss (mean of the last 5% of steps); lower is better; best per row in bold; "
              "† = a run diverged. Task names are the μP variants; SP optimizers (SP LO, AdamW, "
              "SGD, sign, Prodigy) ran the same network in standard parametrization (`-sp`)."]
    if doc.get("host"):
        h = doc["host"]
        lines.append(f"- host: {h['machine']}, {h['cpu_threads']} CPU threads, devices "
                     f"{', '.join(h['devices'])}, jax {h['jax']} (learned-optimizer runs are "
                     "bit-reproducible at the same thread count; see `eval.suite.host_info`)")
    lines += _overrides(doc) + [""]
    axes = []
    for c in doc["cells"]:
        if c["axis"] not in axes:
            axes.append(c["axis"])
    for axis in axes:
        cells = [c for c in doc["cells"] if c["axis"] == axis]
        names = [n for n in cells[0]["optimizers"]]
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
    lines += ["Tuned learning rates (‡ = the best LR is at an end of its grid, so a wider grid "
              "might do better): " + "; ".join(
        f"{c['task']} ({c['steps']} steps): " + ", ".join(
            f"{n}={o['lr']:.3g}" + ("‡" if len(o["grid"]) > 1 and o["lr"] in
                                    (o["grid"][0], o["grid"][-1]) else "")
            for n, o in c["optimizers"].items() if "grid" in o) for c in doc["cells"]), ""]
    names = list(dict.fromkeys(n for c in doc["cells"] for n in c["optimizers"]))
    lines += ["Seconds per training step (compile excluded; vmapped runs, so per run-step):",
              "", "| task | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for c in doc["cells"]:
        lines.append(f"| {c['task']} | " + " | ".join(
            f"{c['optimizers'][n]['wall_s_per_step'] * 1e3:.2f} ms" if n in c["optimizers"]
            else "" for n in names) + " |")
    lines.append("")
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
        names = [n for n in width_cells[0]["optimizers"] if "(untrained)" not in n]
        for name in names:
            pts = sorted((int(re.search(r"-w(\d+)", c["task"])[1]),
                          c["optimizers"][name]["final_mean"]) for c in width_cells
                         if name in c["optimizers"])
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

    deep = [c for c in cells if c["axis"] == "deeper"]
    if deep:
        base = re.sub(r"-d\d+", "", deep[0]["task"])
        pts_cells = [c for c in cells if c["axis"] in ("in-distribution", "deeper")
                     and re.sub(r"-d\d+", "", c["task"]) == base and c["steps"] == deep[0]["steps"]]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for name in deep[0]["optimizers"]:
            pts = sorted((int(re.search(r"-d(\d+)", c["task"])[1]),
                          c["optimizers"][name]["final_mean"]) for c in pts_cells
                         if name in c["optimizers"])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        ax.set_xlabel("depth (hidden layers)")
        ax.set_ylabel("final train loss")
        ax.set_title(f"final loss vs depth ({base})", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "final_loss_vs_depth.png", dpi=110)
        plt.close(fig)
        files.append("final_loss_vs_depth.png")

    names = [n for n in cells[0]["optimizers"] if "(untrained)" not in n]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cells)), 4))
    wbar = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [c["optimizers"].get(name, {}).get("speedup_vs_adamw", np.nan) for c in cells]
        ax.bar(np.arange(len(cells)) + i * wbar, vals, wbar, label=name)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(cells)) + 0.4 - wbar / 2)
    ax.set_xticklabels([f"{c['axis']}\n{c['task']}" for c in cells], fontsize=6)
    ax.set_ylabel("speedup vs tuned AdamW")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "speedup.png", dpi=110)
    plt.close(fig)
    files.append("speedup.png")
    return files


def _tensorboard(doc: dict, logdir: Path) -> None:
    """Mean train-loss curves (<= 500 points each) and final losses as TensorBoard scalars."""
    from meta_train.tblog import TBWriter
    w = TBWriter(logdir)
    for c in doc["cells"]:
        for name, o in c["optimizers"].items():
            tag = f"{c['axis']}/{c['task']}/{name}"
            curve = np.asarray(o["mean_curve"])
            for step in np.unique(np.linspace(0, len(curve) - 1, 500).astype(int)):
                w.scalars(int(step) + 1, {f"{tag}/train_loss": float(curve[step])})
            w.scalars(c["steps"], {f"{tag}/final_train_loss": o["final_mean"],
                                   f"{tag}/test_accuracy": float(np.mean(o["test_accuracy"]))})
    w.close()
