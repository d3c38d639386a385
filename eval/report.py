"""Reports of a suite run: results.json, results.csv, report.md and PNG plots."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np

from lopt.io.provenance import commit as _commit
from eval.labels import UNTRAINED
from eval.plots import save_axes_figure


def _rounded_curves(doc: dict) -> dict:
    """The document with per-seed curves at 5 significant digits (float32 carries ~7): long-
    horizon suites hold 10^5 curve points, and full repr digits would triple the file for
    nothing. Mean curves keep full precision (``full_mean_curves``): ``eval.merge``
    recomputes speedups from them, and a speedup compares curve values that can agree to 6
    digits. Summary numbers (final losses, accuracies) keep full precision too."""
    cells = []
    for c in doc["cells"]:
        opts = {n: dict(o, **({"seed_curves": [[float(f"{x:.5g}") for x in sc]
                                               for sc in o["seed_curves"]]}
                              if "seed_curves" in o else {}))
                for n, o in c["optimizers"].items()}
        cells.append(dict(c, optimizers=opts))
    return dict(doc, cells=cells, full_mean_curves=True)


class OutError(ValueError):
    """An output directory a report cannot be written to (a meta-training run's directory, a
    regular file, or not writable); the message names the problem and the fix."""


def meta_training_run(out: Path) -> list[str]:
    """The files that make ``out`` a meta-training run's directory (``config.json`` with
    ``checkpoints/`` or ``metrics.jsonl``, see :mod:`meta_train.loop`); empty if it is not."""
    out = Path(out)
    if not (out / "config.json").is_file():
        return []
    found = [n for n in ("checkpoints/", "metrics.jsonl") if (out / n.rstrip("/")).exists()]
    return ["config.json"] + found if found else []


def check_out(out: Path, create: bool = True) -> None:
    """Refuses an ``out`` a report must not be written to: a meta-training run's directory
    (its ``tb/`` would be replaced by the report's), a regular file, or a directory this
    process cannot create or write. ``create``: make the directory (and check it is
    writable) now.

    Raises:
      OutError: naming the problem and the fix.
    """
    out = Path(out)
    run = meta_training_run(out)
    if run:
        raise OutError(f"--out {out} holds a meta-training run ({', '.join(run)}), whose tb/ a "
                       f"report would replace; write the eval beside it, e.g. --out {out}/eval")
    if out.exists() and not out.is_dir():
        raise OutError(f"--out {out} is a file, not a directory; give a directory path")
    if not create:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise OutError(f"--out {out} cannot be written ({e.strerror}); give a writable "
                       "directory") from None


def _write_text(path: Path, text: str) -> None:
    """``path`` replaced whole: a reader (or another process writing the same report from a
    shared ``--out``) never sees it half written."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_all(doc: dict, out: Path, command: str) -> dict:
    """Writes the report files of ``doc`` into ``out``.

    Raises:
      OutError: ``out`` is a meta-training run's directory, a file or not writable.
    """
    out = Path(out)
    check_out(out)
    doc = dict(doc, commit=_commit(), command=command)
    _write_text(out / "results.json", json.dumps(_rounded_curves(doc)))
    rows = []
    for c in doc["cells"]:
        for name, o in c["optimizers"].items():
            rows.append({"axis": c["axis"], "task": o.get("task", c["task"]),
                         "source": c.get("source", ""),
                         "steps": c["steps"], "optimizer": name, "lr": o.get("lr", ""),
                         "final_train_loss_mean": o["final_mean"],
                         "final_train_loss_std": o["final_std"],
                         "test_loss_mean": float(np.mean(o["test_loss"])),
                         "test_accuracy_mean": float(np.mean(o["test_accuracy"])),
                         "test_metrics": o.get("test_metrics", ""),
                         "diverged": diverged(o),
                         "peak_over_initial": peak_ratio(o),
                         "speedup_vs_adamw": o.get("speedup_vs_adamw", ""),
                         "seconds_per_step": o.get("wall_s_per_step", "")})
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    _write_text(out / "results.csv", buf.getvalue())
    plots = _plots(doc, out)
    _tensorboard(doc, out / "tb")
    md = markdown(doc, plots)
    _write_text(out / "report.md", md)
    return {"markdown": md, "plots": plots}


def publish(doc: dict, out: Path, command: str) -> None:
    """``write_all``, then the report on stdout and a line naming the files written (what the
    CLIs end with)."""
    rep = write_all(doc, out, command)
    print(rep["markdown"])
    print(f"wrote {out}/report.md, results.json, results.csv, tb/ (TensorBoard), "
          + ", ".join(rep["plots"]))


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


def _header_line(label: str, groups: dict[str, str], every: str) -> list[str]:
    """``- label: value (every ...)`` when one value holds everywhere, else each value with
    the cells or rows it holds for (``groups``: value -> those, as text); none if empty."""
    if not groups:
        return []
    if len(groups) == 1:
        return [f"- {label}: {next(iter(groups))} (every {every})"]
    return [f"- {label}: " + "; ".join(f"{v} ({where})" for v, where in groups.items())]


def _data_line(doc: dict) -> list[str]:
    """The header line naming the data the cells trained on (``Task.source``), with the
    cells of each source when there is more than one; none for documents without sources."""
    by_source: dict[str, list[str]] = {}
    for c in doc["cells"]:
        if c.get("source"):
            tasks = by_source.setdefault(c["source"], [])
            if c["task"] not in tasks:
                tasks.append(c["task"])
    return _header_line("data", {s: ", ".join(t) for s, t in by_source.items()}, "cell")


def _test_metrics_line(doc: dict) -> list[str]:
    """The header line saying where the test loss and accuracy come from: the whole test
    split, or (groups cached by older suite versions, online data) sampled batches."""
    kinds: dict[str, int] = {}
    for c in doc["cells"]:
        for o in c["optimizers"].values():
            if o.get("test_metrics"):
                kinds[o["test_metrics"]] = kinds.get(o["test_metrics"], 0) + 1
    return _header_line("test loss and accuracy", {k: f"{n} rows" for k, n in kinds.items()},
                        "row")


def _host_text(h: dict) -> str:
    return (f"jax {h.get('jax')}, optax {h.get('optax')}, {h.get('cpu_threads')} CPU threads"
            if h else "not recorded (cached before groups recorded it)")


def _host_line(doc: dict) -> list[str]:
    """The header line naming the jax/optax versions and CPU threads the rows' groups ran
    with (``eval.keys.host_record``), flagged as a mixture where rows differ: float bits
    differ between them, and a learned optimizer can amplify that to seed-noise size. None
    when no row recorded it (documents made before groups did)."""
    from eval.cache import distinct_hosts
    counts: dict[str, int] = {}
    for c in doc["cells"]:
        for o in c["optimizers"].values():
            hosts = distinct_hosts([o.get("host")]) or [None]
            text = " + ".join(_host_text(h) for h in hosts)
            counts[text] = counts.get(text, 0) + 1
    if set(counts) <= {_host_text(None)}:
        return []
    line = _header_line("computed with", {k: f"{n} rows" for k, n in counts.items()}, "row")
    mixed = len(counts) > 1 or any(" + " in k for k in counts)
    return [line[0] + (" — **a mixture**: rows computed with different versions or thread "
                       "counts may differ in their last float bits" if mixed else "")]


def loss_columns(opts: dict, names: list[str]) -> list[str]:
    """One table row's cells: ``mean ± std`` of the final train loss per optimizer in
    ``names`` (``†`` if it diverged, bold for the lowest mean among them, empty where a name
    has no row in this cell)."""
    best = min((opts[n]["final_mean"] for n in names if n in opts), default=None)
    cols = []
    for n in names:
        o = opts.get(n)
        if o is None:
            cols.append("")
            continue
        s = (f"{o['final_mean']:.3f} ± {o['final_std']:.3f}"
             + (" †" if diverged(o) else " §" if spiked(o) else ""))
        cols.append(f"**{s}**" if o["final_mean"] == best else s)
    return cols


def _fmt(v) -> str:
    """A setting as text; a sequence of sequences (fixed cells) as ``a/b/c`` items, the
    same whether it was read from JSON (lists) or a ``SuiteSpec`` (tuples)."""
    if isinstance(v, (list, tuple)):
        return ", ".join("/".join(map(str, x)) if isinstance(x, (list, tuple)) else str(x)
                         for x in v)
    return str(v)


def diverged(o: dict) -> bool:
    """A row diverged: a run's own non-finite flag, or a seed whose final loss is non-finite
    or far above its initial loss (``eval.suite.blew_up``). Documents written before
    per-seed initial losses were stored fall back to the mean curve's first point."""
    from eval.suite import blew_up
    if "final_train_loss" not in o:      # a summary row without per-seed losses
        return bool(o["diverged"])
    initial = o.get("initial_train_loss") or [o["mean_curve"][0]] * len(o["final_train_loss"])
    return bool(o["diverged"] or blew_up(initial, o["final_train_loss"]).any())


def peak_ratio(o: dict) -> float:
    """The row's highest loss over its initial loss, the largest over seeds: how far its
    worst run rose mid-run. From the per-seed peaks of the whole runs; rows written before
    those were stored fall back to the strided per-seed curves, which can step over a short
    spike (then the ratio is a lower bound). NaN for a summary row that holds no losses."""
    curve = o.get("mean_curve")
    init = o.get("initial_train_loss") or ([curve[0]] if curve else None)
    if o.get("peak_train_loss") is not None:
        peak = o["peak_train_loss"]
    elif o.get("seed_curves") is not None:
        peak = np.max(np.asarray(o["seed_curves"], np.float64), axis=1)
    else:
        peak = [max(curve)] if curve else None
    if init is None or peak is None:
        return float("nan")
    return float(np.max(np.asarray(peak, np.float64) / np.asarray(init, np.float64)))


def spiked(o: dict) -> bool:
    """A row that did not diverge but where a seed's loss rose above ``DIVERGED_RATIO`` x its
    initial loss mid-run and came back: its final loss hides an instability a user meets
    (and tuned AdamW shows on the widest MLPs in its first steps). Marked ``§``; it does not
    change the win rule."""
    return not diverged(o) and peak_ratio(o) > _diverged_ratio()


def _diverged_ratio() -> float:
    from eval.suite import DIVERGED_RATIO
    return DIVERGED_RATIO


ADAMW_FORMS = ("adamw", "adamw-cosine")


def beats(mine: dict, other: dict) -> bool:
    """The win rule of every report and summary: row ``mine`` beats row ``other`` when it did
    not diverge and ends at a lower or equal mean final loss, or only ``other`` diverged."""
    if diverged(mine):
        return False
    return diverged(other) or mine["final_mean"] <= other["final_mean"]


def tuned_adamw(opts: dict) -> str | None:
    """A cell's better tuned AdamW form (constant or warmup-cosine, whichever reaches the
    lower mean final loss; a diverged form counts only if both diverged), None if it has
    neither."""
    forms = [(diverged(opts[n]), opts[n]["final_mean"], n) for n in ADAMW_FORMS if n in opts]
    return min(forms)[2] if forms else None


def against_adamw(doc: dict) -> list[dict]:
    """Per learned optimizer and cell: its final loss against the better tuned AdamW form
    (constant or warmup-cosine, whichever reaches the lower mean final loss on the report
    seeds; a diverged form counts only if both diverged), and its speedup over that form.
    A diverged LO row is a loss."""
    from eval.suite import seconds_to_target, speedup
    rows = []
    for lo in doc["los"]:
        for c in doc["cells"]:
            o = c["optimizers"].get(lo["label"])
            best = tuned_adamw(c["optimizers"])
            if o is None or best is None:
                continue
            a = c["optimizers"][best]
            adamw_s, lo_s = seconds_to_target(a, o)
            rows.append({"lo": lo["label"], "axis": c["axis"], "task": c["task"],
                         "steps": c["steps"], "lo_final": o["final_mean"],
                         "lo_diverged": diverged(o), "adamw": best,
                         "lo_spiked": spiked(o), "lo_peak": peak_ratio(o),
                         "adamw_peak": peak_ratio(a),
                         "adamw_final": a["final_mean"],
                         "win": beats(o, a),
                         "speedup": speedup(a["mean_curve"], o["mean_curve"]),
                         # wall-clock seconds to AdamW's lowest loss (None: never / untimed)
                         "adamw_s": adamw_s, "lo_s": lo_s,
                         "wallclock_speedup": (adamw_s / lo_s if adamw_s and lo_s else
                                               (0.0 if adamw_s else None)),
                         "curves": ((np.asarray(a["seed_curves"]), np.asarray(o["seed_curves"]))
                                    if "seed_curves" in a and "seed_curves" in o else None)})
    return rows


def _secs(s: float | None) -> str:
    return "-" if s is None else (f"{s:.1f}" if s < 100 else f"{s:.0f}")


def bootstrap_speedup(pairs: list[tuple[np.ndarray, np.ndarray]], n: int = 2000,
                      seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the geometric-mean speedup over cells.

    ``pairs``: per cell, (AdamW's per-seed curves [S, T'], the LO's [S', T']). Each resample
    draws the seeds of every curve set with replacement, averages them and takes the speedup
    (:func:`eval.suite.speedup`) per cell, then the geometric mean over cells (0 when some
    cell's speedup is 0). With 3 seeds per cell the interval is coarse; it shows how much of
    a speedup the seed noise alone could make.
    """
    from eval.suite import speedup
    rng = np.random.default_rng(seed)
    geo = np.empty(n)
    for b in range(n):
        sp = []
        for ref, cand in pairs:
            r = ref[rng.integers(0, len(ref), len(ref))].mean(0)
            c = cand[rng.integers(0, len(cand), len(cand))].mean(0)
            sp.append(speedup(r, c))
        sp = np.asarray(sp)
        geo[b] = float(np.exp(np.mean(np.log(sp)))) if np.all(sp > 0) else 0.0
    lo, hi = np.percentile(geo, [2.5, 97.5])
    return float(lo), float(hi)


def _narrower_timing(doc: dict, row: dict) -> str:
    """What a row that did not run costs where it did: its measured time per run-step on the
    widest narrower cell of the same axis and task family (the report's own numbers, not an
    extrapolation); "" when it ran on no such cell."""
    base = _parsed(row["task"])
    width = base.width if base else None
    family = base.variant("mup").family if base else None
    found = [(_parsed(c["task"]).width, c) for c in doc["cells"]
             if c["axis"] == row["axis"] and _parsed(c["task"])
             and _parsed(c["task"]).variant("mup").family == family
             and row["optimizer"] in c["optimizers"]] if width is not None else []
    found = [(w, c) for w, c in found if w is not None and w < width]
    if not found:
        return ""
    w, c = max(found, key=lambda p: p[0])
    o = c["optimizers"][row["optimizer"]]
    per = o.get("wall_s_per_step")
    if not per:
        return ""
    return (f" (measured on `{c['task']}`, {width / w:g}x narrower: "
            f"{per * 1e3:.0f} ms per run-step)")


def _against_adamw_md(doc: dict) -> list[str]:
    rows = against_adamw(doc)
    if not rows:
        return []
    forms = [n for n in ADAMW_FORMS if n in doc["cells"][0]["optimizers"]]
    lines = ["## Learned optimizers against tuned AdamW", "",
             f"Each cell compares the LO with the better tuned AdamW form ({', '.join(forms)}) "
             "on the mean final train loss over the report seeds; speedup = steps that AdamW "
             "form needs to reach the lowest point of its seed-mean curve / steps the LO needs "
             "to reach that loss (0 = never reaches it: an LO can win on final loss, the mean "
             "of the last 5% of steps, and still never reach AdamW's lowest point). "
             "A diverged (†) LO loses. Time to target: wall-clock seconds each needs to "
             "reach that AdamW form's lowest loss, its steps times its measured seconds per "
             "run-step in this run (compile excluded; - = never reaches it); wall-clock "
             "speedup = AdamW's seconds / the LO's. Peak: the highest loss of any seed's run "
             "over its initial loss, for the LO and that AdamW form (§: above "
             f"{_diverged_ratio()}x mid-run and recovered).", "",
             "| LO | axis | task | steps | LO | better AdamW | result | speedup | "
             "AdamW s to target | LO s to target | wall-clock speedup | peak LO / AdamW |",
             "|---|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['lo']} | {r['axis']} | {r['task']} | {r['steps']} | "
                     f"{r['lo_final']:.3f}"
                     f"{' †' if r['lo_diverged'] else ' §' if r['lo_spiked'] else ''} | "
                     f"{r['adamw']} {r['adamw_final']:.3f} | {'win' if r['win'] else 'loss'} | "
                     f"{r['speedup']:.2f} | {_secs(r['adamw_s'])} | {_secs(r['lo_s'])} | "
                     + (f"{r['wallclock_speedup']:.2f} |" if r["wallclock_speedup"] is not None
                        else "- |")
                     + f" {r['lo_peak']:.3g}x / {r['adamw_peak']:.3g}x |")
    lines.append("")
    for lo in dict.fromkeys(r["lo"] for r in rows):
        mine = [r for r in rows if r["lo"] == lo]
        sp = np.array([r["speedup"] for r in mine])
        geo = float(np.exp(np.mean(np.log(sp)))) if np.all(sp > 0) else 0.0
        ci = ""
        if all(r["curves"] is not None for r in mine):
            a, b = bootstrap_speedup([r["curves"] for r in mine])
            ci = f" (95% bootstrap interval over seeds {a:.2f}-{b:.2f})"
        wall = [r["wallclock_speedup"] for r in mine if r["wallclock_speedup"] is not None]
        wall_txt = ""
        if wall:
            wins = sum(w > 1 for w in wall)
            gw = float(np.exp(np.mean(np.log(wall)))) if all(w > 0 for w in wall) else 0.0
            wall_txt = (f"; wall-clock: faster to AdamW's lowest loss on {wins} of {len(wall)} "
                        f"timed cells, geometric-mean wall-clock speedup {gw:.2f}")
        spikes = [r for r in mine if r["lo_spiked"]]
        spike_txt = ("; **unstable mid-run** on " + ", ".join(
            f"{r['task']} (peak {r['lo_peak']:.3g}x its initial loss)" for r in spikes)
            if spikes else "")
        lines.append(f"- **{lo}**: wins {sum(r['win'] for r in mine)} of {len(mine)} cells "
                     f"against the better tuned AdamW; geometric-mean speedup {geo:.2f}"
                     + (" (0: on some cell it never reaches AdamW's lowest point)"
                        if geo == 0 else "") + ci + wall_txt + spike_txt)
    return lines + [""]


def _tuned_names(doc: dict) -> list[str]:
    """The tuned baselines the report's cells hold, in first-seen order.

    A fixed cell (a transformer, the factored LM) runs its own baselines, so the run's
    `baselines` list alone would name optimizers no row holds; it is the answer only when no
    cell ran yet.
    """
    names = [n for c in doc.get("cells", []) for n, r in c["optimizers"].items() if r.get("grid")]
    return list(dict.fromkeys(names)) or list(doc["baselines"])


def markdown(doc: dict, plots: list[str]) -> str:
    lines = [f"# Generalization suite `{doc['suite']}`", ""] + _header_md(doc) + [""]
    lines += _axis_tables_md(doc)
    for sk in doc.get("skipped", []):
        lines += [f"## {sk['axis']}: `{sk['task']}` skipped", "", sk["reason"], ""]
    if doc.get("not_run"):
        lines += ["## Not run yet", "", "Report made with `--cached-only`: these rows had no "
                  "cached results and are missing from the tables above.", ""]
        lines += [f"- {r['axis']} `{r['task']}` ({r['steps']} steps): {r['optimizer']}"
                  + _narrower_timing(doc, r) for r in doc["not_run"]] + [""]
    lines += _against_adamw_md(doc)
    lines += _tuned_lrs_md(doc)
    names = list(dict.fromkeys(n for c in doc["cells"] for n in c["optimizers"]))
    lines += ["Seconds per training step (compile excluded; vmapped runs, so per run-step):",
              "", "| task | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for c in doc["cells"]:
        lines.append(f"| {c['task']} | " + " | ".join(
            f"{c['optimizers'][n]['wall_s_per_step'] * 1e3:.2f} ms" if n in c["optimizers"]
            else "" for n in names) + " |")
    lines.append("")
    lines += _compute_md(doc, names)
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _header_md(doc: dict) -> list[str]:
    """The report's opening list: the LOs, where the cells come from, data, test metrics,
    hosts, commit and command, merged runs, the protocol and the suite's settings."""
    lines = []
    for lo in doc["los"]:
        mc = lo["meta_config"] or {}
        lines.append(f"- **{lo['label']}**: `{lo['path']}` ({'μP' if lo['config']['mup'] else 'SP'}"
                     f", meta-step {lo['meta_step']}, theta digest {lo['digest']}); meta-trained "
                     f"on {', '.join(mc.get('tasks', []))}, horizons "
                     f"{mc.get('es', {}).get('min_horizon')}-{mc.get('es', {}).get('max_horizon')}")
    if doc.get("spec", {}).get("cells"):
        lines.append(f"- cells fixed by the `{doc['suite']}` suite (the same for every learned "
                     "optimizer)" + (f"; in-distribution cells from {doc['cells_defined_by']}'s "
                                     "meta-training config" if any(
                                         c["axis"] == "in-distribution" for c in doc["cells"])
                                     else ""))
    elif doc.get("cells_defined_by"):
        lines.append(f"- cells (tasks, widths, depths, step counts) defined by "
                     f"{doc['cells_defined_by']}'s meta-training config")
    lines += _data_line(doc)
    lines += _test_metrics_line(doc)
    lines += _host_line(doc)
    lines += [f"- commit `{doc['commit']}`; command: `{doc['command']}`"]
    for m in doc.get("merged_from", []):
        lines.append(f"  - merged from `{m['source']}`: {', '.join(m['cells'])}; computed at "
                     f"commit `{m.get('commit')}` by `{m.get('command')}`"
                     + (f" on {m['host']['machine']}, {m['host']['cpu_threads']} CPU threads"
                        if m.get("host") and m["host"] != doc.get("host") else "")
                     + (" with " + ", ".join(f"{k} = {_fmt(v)}" for k, v in m["settings"].items())
                        + " (unlike the first run)" if m.get("settings") else ""))
    lines += [
              f"- baselines ({', '.join(_tuned_names(doc))}) tuned on seed "
              f"{doc.get('tuning_seed', 0)} over a log LR grid; "
              f"everything reported on seeds {doc['report_seeds']}: mean ± std of the final "
              "train loss (mean of the last 5% of steps); lower is better; best per row in bold; "
              "† = a run diverged (non-finite, or a seed's final loss above "
              f"{_diverged_ratio()}x its initial loss); § = no run diverged, but a seed's loss "
              f"rose above {_diverged_ratio()}x its initial loss mid-run and came back. Task "
              "names are the μP variants; SP "
              "optimizers (SP LO, AdamW, SGD, sign, Prodigy) ran the same network in standard "
              "parametrization (`-sp`).",
              "- `-cosine`: linear warmup over the first 5% of the steps from 0 to the tuned "
              "peak LR, then cosine decay to 0.1x the peak at the last step"
              + (f"; this run used it for every tuned baseline (`--schedule "
                 f"{doc['spec']['schedule']}`)"
                 if doc.get("spec", {}).get("schedule", "constant") != "constant" else "")
              + "."]
    if doc.get("host"):
        h = doc["host"]
        lines.append(f"- host: {h['machine']}, {h['cpu_threads']} CPU threads, devices "
                     f"{', '.join(h['devices'])}, jax {h['jax']} (learned-optimizer runs are "
                     "bit-reproducible at the same thread count; see `eval.suite.host_info`)")
    edges = doc.get("spec", {}).get("extend_edges")
    if edges:
        lines.append(f"- a tuned LR at an end of its grid widens the sweep by up to {edges} "
                     "more grid steps beyond that end (tuning seed only), until the best is "
                     "inside; a ‡ that remains means the best is still at the widened end")
    above = doc.get("spec", {}).get("mutransfer_above")
    lm_above = doc.get("spec", {}).get("lm_mutransfer_above_d")
    lm_above = lm_above if any(c["axis"] == "transformer" for c in doc["cells"]) else 0
    if above or lm_above:
        where = ([f"on wider cells above {above}x the widest meta-training width"]
                 if above else [])
        where += [f"on transformer cells with a d_model above {lm_above}"] if lm_above else []
        lines.append("- μTransfer: " + " and ".join(where) + ", μP baselines search only the "
                     "LR tuned at the widest cell of the same family at or below that limit and "
                     "its two grid neighbours (arXiv 2203.03466); SP baselines keep their full "
                     "grid")
    return lines + _overrides(doc)


def _axis_tables_md(doc: dict) -> list[str]:
    """Per axis: final losses, then step speedups over tuned AdamW ("–" in a cell without
    AdamW)."""
    lines = []
    for axis in dict.fromkeys(c["axis"] for c in doc["cells"]):
        cells = [c for c in doc["cells"] if c["axis"] == axis]
        # fixed cells (transformer, low-rank) carry their own baselines
        names = list(dict.fromkeys(n for c in cells for n in c["optimizers"]))
        lines += [f"## {axis}", "", "| task | steps | " + " | ".join(names) + " |",
                  "|---|---:|" + "---:|" * len(names)]
        for c in cells:
            lines.append(f"| {c['task']} | {c['steps']} | "
                         + " | ".join(loss_columns(c["optimizers"], names)) + " |")
        lines += ["", "Speedup vs tuned AdamW (`adamw`; `adamw-cosine` where it is absent): "
                  "steps AdamW needs to reach the lowest point of its seed-mean curve / steps "
                  "the optimizer needs to reach that loss; 0 = never reaches it; – = no AdamW "
                  "row in the cell:", "",
                  "| task | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for c in cells:
            lines.append(f"| {c['task']} | " + " | ".join(
                ("–" if "speedup_vs_adamw" not in c["optimizers"][n]
                 else f"{c['optimizers'][n]['speedup_vs_adamw']:.2f}")
                if n in c["optimizers"] else "" for n in names) + " |")
        lines.append("")
    return lines


def _tuned_lrs_md(doc: dict) -> list[str]:
    return ["Tuned learning rates (‡ = the best LR is at an end of its grid, so a wider grid "
            "might do better): " + "; ".join(
        f"{c['task']} ({c['steps']} steps): " + ", ".join(
            f"{n}={o['lr']:.3g}" + ("‡" if len(o["grid"]) > 1 and o["lr"] in
                                    (o["grid"][0], o["grid"][-1]) else "")
            + (f" (μTransfer from {'d' if c['task'].startswith('lm-') else 'w'}"
               f"{o['mutransfer_from_width']})"
               if o.get("mutransfer_from_width") else "")
            + (f" (AdamW at {o['adam_lr']:.3g} on the other leaves)" if o.get("adam_lr")
               else "")
            for n, o in c["optimizers"].items() if "grid" in o) for c in doc["cells"]), ""]


def _compute_md(doc: dict, names: list[str]) -> list[str]:
    """Minutes each row of each cell took (compile included; a tuned baseline adds its LR
    sweep), each cell's total and the whole report's: the suite's end-to-end compute, even
    when its groups ran in several invocations."""
    if not any("compute_s" in o for c in doc["cells"] for o in c["optimizers"].values()):
        return []       # a document written before rows recorded their seconds
    lines = ["Compute per cell in minutes, as each cached group recorded it (compile included; "
             "a tuned baseline includes its LR sweep):", "",
             "| task | steps | " + " | ".join(names) + " | cell |",
             "|---|---:|" + "---:|" * (len(names) + 1)]
    total = 0.0
    for c in doc["cells"]:
        cell = sum(o.get("compute_s", 0.0) for o in c["optimizers"].values())
        total += cell
        lines.append(f"| {c['task']} | {c['steps']} | " + " | ".join(
            f"{c['optimizers'][n]['compute_s'] / 60:.1f}"
            if "compute_s" in c["optimizers"].get(n, {}) else "" for n in names)
            + f" | {cell / 60:.1f} |")
    lines += ["", f"Total compute of this report's rows: {total / 3600:.2f} h.", ""]
    return lines


def styles(doc: dict) -> dict[str, dict]:
    """One line style per optimizer, shared by every panel of every plot: learned optimizers
    first, then the baselines in the document's order, each a tab20 dark color; an LO's
    untrained twin takes the light shade of its color, dashed."""
    import matplotlib
    palette = matplotlib.colormaps["tab20"].colors
    names = [lo["label"] for lo in doc.get("los", [])]
    names += [n for c in doc["cells"] for n in c["optimizers"]]
    base = list(dict.fromkeys(n.removesuffix(UNTRAINED) for n in names))
    out = {}
    for name in dict.fromkeys(names):
        i = base.index(name.removesuffix(UNTRAINED))
        untrained = name.endswith(UNTRAINED)
        # past 10 optimizers the colors repeat with a dotted line
        ls = "--" if untrained else ("-" if i < 10 else ":")
        out[name] = {"color": palette[(2 * i) % 20 + int(untrained)], "linestyle": ls}
    return out


def _legend(fig, style: dict, names) -> None:
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], lw=1.6, label=n, **style[n]) for n in names]
    fig.legend(handles=handles, fontsize=7, loc="outside lower center",
               ncol=min(len(handles), 6))


def _parsed(task: str):
    """``task`` as a :class:`meta_train.tasks.TaskName`, or None for a name this version does
    not read (a report of older tasks still plots the rest)."""
    from meta_train.tasks import TaskName
    try:
        return TaskName.parse(task)
    except ValueError:
        return None


def _plots(doc: dict, out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    cells = doc["cells"]
    style = styles(doc)
    n = len(cells)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axs = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows + 0.8), squeeze=False,
                            layout="constrained")
    for ax, c in zip(axs.ravel(), cells):
        for name, o in c["optimizers"].items():
            curve = np.asarray(o["mean_curve"])
            k = max(1, len(curve) // 100)
            sm = np.convolve(curve, np.ones(k) / k, mode="valid")
            ax.plot(np.arange(len(sm)) + k, sm, label=name, lw=1.4, **style[name])
        ax.set_title(f"{c['axis']}: {c['task']}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("train loss")
        ax.set_yscale("log")
    for ax in axs.ravel()[n:]:
        ax.axis("off")
    _legend(fig, style, list(style))
    fig.savefig(out / "loss_curves.png", dpi=110)
    plt.close(fig)
    files.append("loss_curves.png")

    width_cells = [c for c in cells if c["axis"] in ("in-distribution", "wider")
                   and _parsed(c["task"]) and _parsed(c["task"]).width]
    if width_cells:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        names = [n for n in dict.fromkeys(n for c in width_cells for n in c["optimizers"])
                 if UNTRAINED not in n]
        for name in names:
            pts = sorted((_parsed(c["task"]).width,
                          c["optimizers"][name]["final_mean"]) for c in width_cells
                         if name in c["optimizers"])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name,
                    **style[name])
        ax.set_xscale("log", base=2)
        files.append(save_axes_figure(fig, ax, out / "final_loss_vs_width.png", xlabel="width",
                                      ylabel="final train loss", title="final loss vs width"))

    deep = [c for c in cells if c["axis"] == "deeper"]
    if deep:
        base = _parsed(deep[0]["task"])
        pts_cells = [c for c in cells if c["axis"] in ("in-distribution", "deeper")
                     and base and _parsed(c["task"])
                     and _parsed(c["task"]).without_depth() == base.without_depth()
                     and c["steps"] == deep[0]["steps"]]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for name in deep[0]["optimizers"]:
            pts = sorted((_parsed(c["task"]).depth,
                          c["optimizers"][name]["final_mean"]) for c in pts_cells
                         if name in c["optimizers"])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name,
                    **style[name])
        files.append(save_axes_figure(fig, ax, out / "final_loss_vs_depth.png",
                                      xlabel="depth (hidden layers)", ylabel="final train loss",
                                      title=f"final loss vs depth ({base})", title_size=9))

    names = [n for n in style if UNTRAINED not in n]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cells)), 4))
    wbar = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [c["optimizers"].get(name, {}).get("speedup_vs_adamw", np.nan) for c in cells]
        ax.bar(np.arange(len(cells)) + i * wbar, vals, wbar, label=name,
               color=style[name]["color"])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(cells)) + 0.4 - wbar / 2)
    ax.set_xticklabels([f"{c['axis']}\n{c['task']}" for c in cells], fontsize=6)
    files.append(save_axes_figure(fig, ax, out / "speedup.png", xlabel="",
                                  ylabel="speedup vs tuned AdamW"))
    return files


def _tensorboard(doc: dict, logdir: Path) -> None:
    """Mean train-loss curves (<= 500 points each) and final losses as TensorBoard scalars,
    in a directory that replaces ``logdir`` whole.

    TensorBoard reads every event file of a directory, so a report written again into the
    same ``--out`` (a rerun, ``--cached-only``, another process sharing it) would show each
    series twice; the directory is written aside and swapped in instead.
    """
    tag = f"{os.getpid()}.{threading.get_ident()}"
    fresh = logdir.with_name(f".{logdir.name}.{tag}.new")
    _tb_scalars(doc, fresh)
    olds = []
    for attempt in range(10):               # another writer may swap its own in between
        olds.append(logdir.with_name(f".{logdir.name}.{tag}.{attempt}.old"))
        try:
            logdir.rename(olds[-1])
        except FileNotFoundError:
            pass
        try:
            fresh.rename(logdir)
            break
        except OSError:                     # logdir reappeared: another process's swap
            continue
    for d in olds + [fresh]:
        shutil.rmtree(d, ignore_errors=True)


def _tb_scalars(doc: dict, logdir: Path) -> None:
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
