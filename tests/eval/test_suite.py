"""The eval suite end to end on a freshly meta-trained smoke checkpoint."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from eval import suite as S
from eval.report import write_all
from meta_train.config import PRESETS
from meta_train.loop import run


def test_speedup_on_constructed_curves():
    ref = np.linspace(1.0, 0.5, 101)                 # reaches 0.5 at step 101
    fast = np.concatenate([np.linspace(1.0, 0.5, 51), np.full(50, 0.4)])
    assert S.speedup(ref, ref) == pytest.approx(1.0)
    assert S.speedup(ref, fast) == pytest.approx(101 / 51)
    assert S.speedup(ref, np.full(101, 0.6)) == 0.0
    slow = np.concatenate([np.full(1, 1.0), np.linspace(1.0, 0.5, 200)])
    assert S.speedup(ref, slow[:201]) == pytest.approx(101 / 201)


@pytest.fixture(scope="module")
def smoke_eval(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    for preset, name in (("smoke", "run"), ("smoke-sp", "run-sp")):
        cfg = dataclasses.replace(PRESETS[preset], outer_steps=2, validate_every=0)
        run(cfg, root / name, progress=False)
    doc = S.run_suite([str(root / "run"), str(root / "run-sp")], "smoke", root / "ev",
                      progress=False)
    files = write_all(doc, root / "ev", "test")
    return root, doc, files


def test_smoke_suite_writes_reports(smoke_eval):
    root, doc, files = smoke_eval
    for f in ("results.json", "results.csv", "report.md", "loss_curves.png",
              "final_loss_vs_width.png", "speedup.png"):
        assert (root / "ev" / f).stat().st_size > 0, f
    assert files["plots"] == ["loss_curves.png", "final_loss_vs_width.png", "speedup.png"]
    assert {c["axis"] for c in doc["cells"]} == {"in-distribution", "wider"}
    md = (root / "ev" / "report.md").read_text()
    assert "| mlp-digits8-w32-d2 |" in md and "μLO" in md and "SP LO" in md
    assert doc["host"]["cpu_threads"] >= 1 and f"{doc['host']['cpu_threads']} CPU threads" in md
    back = json.loads((root / "ev" / "results.json").read_text())
    assert back["commit"] and back["cells"][0]["optimizers"]["adamw"]["final_mean"] > 0
    # curves are stored at 6 significant digits, summaries exactly
    for c, cb in zip(doc["cells"], back["cells"]):
        for name, o in c["optimizers"].items():
            ob = cb["optimizers"][name]
            assert ob["final_mean"] == o["final_mean"]
            np.testing.assert_allclose(ob["mean_curve"], o["mean_curve"], rtol=5e-6)
    # each optimizer trained the network in its own parametrization
    opts = doc["cells"][0]["optimizers"]
    assert opts["μLO"]["task"] == "mlp-digits8-w16-d2"
    assert opts["SP LO"]["task"] == opts["adamw"]["task"] == "mlp-digits8-w16-d2-sp"
    assert {"μLO (untrained)", "SP LO (untrained)"} <= set(opts)
    assert "μLO (untrained)" not in doc["cells"][-1]["optimizers"]     # wider: trained only
    for o in opts.values():
        assert 0 < o["wall_s_per_step"] < 1.0


def test_report_states_each_cells_compute_and_the_total(smoke_eval):
    # every cached group is used by exactly one row, so the rows' seconds add up to the
    # seconds the cache recorded: the suite's end-to-end compute, however many invocations
    root, doc, _ = smoke_eval
    groups = [json.loads(f.read_text()) for f in (root / "ev" / "cells").glob("*.json")]
    cached = sum(S.group_seconds(g) for g in groups)
    rows = [o["compute_s"] for c in doc["cells"] for o in c["optimizers"].values()]
    assert len(rows) == len(groups) - sum(len(g["key"]["lrs"]) > 1 for g in groups)
    assert sum(rows) == pytest.approx(cached, rel=1e-9) and min(rows) > 0
    adamw = doc["cells"][0]["optimizers"]["adamw"]
    assert adamw["compute_s"] > adamw["wall_s_per_step"] * doc["cells"][0]["steps"] * 3
    md = (root / "ev" / "report.md").read_text()
    assert f"Total compute of this report's rows: {cached / 3600:.2f} h." in md


def test_tensorboard_scalars_are_written(smoke_eval):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    root, doc, _ = smoke_eval
    acc = EventAccumulator(str(root / "ev" / "tb"))
    acc.Reload()
    c = doc["cells"][0]
    tag = f"{c['axis']}/{c['task']}/μLO/final_train_loss"
    ev = acc.Scalars(tag)
    assert ev[-1].value == pytest.approx(c["optimizers"]["μLO"]["final_mean"], rel=1e-6)
    curve = acc.Scalars(f"{c['axis']}/{c['task']}/adamw/train_loss")
    assert curve[0].step == 1 and curve[-1].step == c["steps"]


def test_a_report_written_again_replaces_its_tensorboard_rather_than_adding_to_it(
        smoke_eval, tmp_path):
    """A rerun, a --cached-only report or a second process on one --out writes the report
    again; TensorBoard reads every event file in tb/, so each series must be there once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from eval import report as R
    _, doc, _ = smoke_eval
    for _ in range(2):
        R.write_all(doc, tmp_path, "python -m eval ...")
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    c = doc["cells"][0]
    steps = [e.step for e in acc.Scalars(f"{c['axis']}/{c['task']}/adamw/train_loss")]
    assert len(steps) == len(set(steps)) and steps[-1] == c["steps"]


def test_tuning_uses_only_the_tuning_seed_and_picks_the_best(smoke_eval):
    root, doc, _ = smoke_eval
    seen = [json.loads(f.read_text()) for f in (root / "ev" / "cells").glob("*.json")]
    for c in doc["cells"]:
        o = c["optimizers"]["adamw"]
        tune = [s for s in seen if s["key"]["task"] == o["task"] and s["key"]["opt"] == "adamw"
                and len(s["key"]["lrs"]) > 1]
        assert len(tune) == 1 and tune[0]["key"]["seeds"] == [0]
        finals = [S.final_loss(np.asarray(l[0])) for l in tune[0]["losses"]]
        assert o["lr"] == o["grid"][int(np.argmin(finals))]
    assert 0 not in doc["report_seeds"]


def test_cached_cells_are_not_recomputed(smoke_eval, monkeypatch):
    root, doc, _ = smoke_eval
    def boom(*a, **k):
        raise AssertionError("recomputed a cached cell")
    monkeypatch.setattr(S.Runner, "_compute", boom)
    again = S.run_suite([str(root / "run"), str(root / "run-sp")], "smoke", root / "ev",
                        progress=False)
    assert again["cells"][0]["optimizers"]["adamw"]["final_mean"] == \
        doc["cells"][0]["optimizers"]["adamw"]["final_mean"]


_META = {"tasks": ["mlp-fmnist8-w32-d3", "mlp-fmnist8-w128-d3"], "es": {"max_horizon": 500}}


def test_cells_follow_the_meta_training_config_and_the_axes_filter():
    spec = S.SUITES["quick"]
    cells = S.cells_for(_META, spec)
    assert [(c.axis, c.task, c.steps) for c in cells] == [
        ("in-distribution", "mlp-fmnist8-w32-d3", 500),
        ("in-distribution", "mlp-fmnist8-w128-d3", 500),
        ("wider", "mlp-fmnist8-w512-d3", 500), ("wider", "mlp-fmnist8-w1024-d3", 500),
        ("deeper", "mlp-fmnist8-w128-d15", 500),
        ("longer", "mlp-fmnist8-w128-d3", 2500)]
    only = S.cells_for(_META, dataclasses.replace(spec, axes=("wider", "longer"), wider=(8,)))
    assert [(c.axis, c.task, c.steps) for c in only] == [
        ("wider", "mlp-fmnist8-w1024-d3", 500), ("longer", "mlp-fmnist8-w128-d3", 2500)]


def test_full_cells_are_fixed_whatever_the_lo_was_meta_trained_on():
    spec = S.SUITES["full"]
    want = [
        ("wider", "mlp-fmnist8-w1024-d3", 500), ("wider", "mlp-fmnist8-w2048-d3", 500),
        ("wider", "mlp-fmnist8-w4096-d3", 500),
        ("deeper", "mlp-fmnist8-w128-d15", 500),
        ("longer", "mlp-fmnist8-w128-d3", 12500),
        ("transformer", "lm-fortunes-d64-l2", 500), ("transformer", "lm-fortunes-d256-l2", 500),
        ("transformer", "lm-fortunes-d512-l2", 500), ("transformer", "lm-fortunes-d64-l6", 500),
        ("transformer-lowrank", "lm-fortunes-d128-l2-r16", 500),
        ("other-data", "mlp-fmnist28-w1024-d3", 500),
        ("cnn", "cnn-fmnist28-c32-d3", 500), ("cnn", "cnn-fmnist28-c64-d3", 500)]
    other = {"tasks": ["mlp-fmnist8-w64-d6", "cnn-fmnist8-c8-d2"], "es": {"max_horizon": 2000}}
    for meta, own in ((_META, ["mlp-fmnist8-w32-d3", "mlp-fmnist8-w128-d3"]),
                      (other, other["tasks"])):
        cells = [(c.axis, c.task, c.steps) for c in S.cells_for(meta, spec)]
        steps = meta["es"]["max_horizon"]
        assert cells == [("in-distribution", t, steps) for t in own] + want
    # μTransfer limits stay relative to the fixed cells' base width, not the LO's widths
    assert S.base_width(other, spec) == 128
    assert S.base_width(other, S.SUITES["quick"]) == 64


def test_unknown_axis_is_one_clear_error(capsys):
    from eval.cli import main
    with pytest.raises(SystemExit) as e:
        main(["--lo", "mulo-cpu", "--axes", "wider,taller"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unknown axis 'taller'" in err and "in-distribution, wider, deeper, longer" in err


def test_an_axis_subset_fills_the_cache_of_the_whole_suite(smoke_eval, monkeypatch):
    root, doc, _ = smoke_eval
    los = [str(root / "run"), str(root / "run-sp")]
    # an axis subset's groups are the whole suite's: run on its cache, it trains nothing
    # (cached_only would list any group it missed) and reads the same numbers ...
    sub = S.run_suite(los, "smoke", root / "ev", progress=False,
                      overrides={"axes": ("wider",)}, cached_only=True)
    assert [c["axis"] for c in sub["cells"]] == ["wider"] and sub["not_run"] == []
    whole = [c for c in doc["cells"] if c["axis"] == "wider"][0]["optimizers"]
    assert {n: r["final_mean"] for n, r in sub["cells"][0]["optimizers"].items()} == \
        {n: r["final_mean"] for n, r in whole.items()}
    # ... and LOs are listed after the baselines even though they ran first
    names = list(sub["cells"][0]["optimizers"])
    assert names.index("adamw@1e-3") < names.index("μLO") < names.index("SP LO")
    # a later run of all axes in a directory holding only the subset's groups computes only
    # the missing cells
    wider = {S.variant(c["task"], p) for c in sub["cells"] for p in ("mup", "sp")}
    (root / "ev-axes" / "cells").mkdir(parents=True)
    for f in (root / "ev" / "cells").glob("*.json"):
        if json.loads(f.read_text())["key"]["task"] in wider:
            shutil.copy(f, root / "ev-axes" / "cells" / f.name)
    assert len(list((root / "ev-axes" / "cells").glob("*.json"))) >= 5
    calls = []
    real = S.Runner._compute
    def counting(self, task_name, *a, **k):
        calls.append(task_name)
        return real(self, task_name, *a, **k)
    monkeypatch.setattr(S.Runner, "_compute", counting)
    S.run_suite(los, "smoke", root / "ev-axes", progress=False)
    in_dist = {c["task"] for c in doc["cells"] if c["axis"] == "in-distribution"}
    assert {S.variant(t, "mup") for t in calls} == in_dist


def test_report_names_where_a_run_departs_from_its_suite():
    from eval.report import _overrides
    spec = dataclasses.asdict(dataclasses.replace(S.SUITES["full"], wider=(8,), seeds=2))
    doc = {"suite": "full", "spec": json.loads(json.dumps(spec)), "baselines": ["adamw"]}
    assert _overrides(doc) == ["- departs from the `full` suite: wider = 8 (suite default "
                               "8, 16, 32); seeds = 2 (suite default 3); baselines = adamw "
                               "(suite default adamw, adamw-cosine, muadam, muon, modular, "
                               "prodigy)"]
    same = {"suite": "full", "spec": dataclasses.asdict(S.SUITES["full"]),
            "baselines": list(S.SUITES["full"].baselines)}
    assert _overrides(same) == []


def test_lo_runs_are_bit_reproducible_on_the_same_host(smoke_eval, tmp_path):
    root, doc, _ = smoke_eval
    lo = S.load_los([str(root / "run")])[0]
    a = S.Runner(tmp_path / "a").run_lo("mlp-digits8-w32-d2", lo, 40, [1, 2])
    b = S.Runner(tmp_path / "b").run_lo("mlp-digits8-w32-d2", lo, 40, [1, 2])
    assert np.asarray(a["losses"]).shape == (1, 2, 40)
    np.testing.assert_array_equal(np.asarray(a["losses"]), np.asarray(b["losses"]))
    assert not np.array_equal(np.asarray(a["losses"])[0, 0], np.asarray(a["losses"])[0, 1])


def test_tuned_lr_at_the_end_of_its_grid_is_flagged(smoke_eval):
    from eval.report import markdown
    root, doc, _ = smoke_eval
    doc = json.loads(json.dumps(dict(doc, commit="x", command="c")))
    o = doc["cells"][0]["optimizers"]["adamw"]
    o["grid"], o["lr"] = [1e-3, 1e-2, 1e-1], 1e-1
    line = [l for l in markdown(doc, []).splitlines() if l.startswith("Tuned learning rates")][0]
    assert f"{doc['cells'][0]['task']} ({doc['cells'][0]['steps']} steps): adamw=0.1‡" in line
    o["lr"] = 1e-2
    line = [l for l in markdown(doc, []).splitlines() if l.startswith("Tuned learning rates")][0]
    assert "adamw=0.01," in line or "adamw=0.01;" in line or line.endswith("adamw=0.01")


def test_dev_suite_holds_the_held_out_cells_and_both_adamw_forms():
    spec = S.SUITES["dev"]
    assert [(c.axis, c.task, c.steps) for c in S.cells_for(_META, spec)] == [
        ("wider", "mlp-fmnist8-w768-d3", 1000), ("deeper", "mlp-fmnist8-w96-d12", 1000),
        ("longer", "mlp-fmnist8-w96-d3", 4000),
        ("transformer", "lm-stdlib-d128-l2", 500), ("transformer", "lm-stdlib-d64-l4", 500),
        ("other-data", "mlp-digits8-w256-d3", 1000), ("cnn", "cnn-fmnist8-c48-d3", 1000)]
    assert spec.baselines == ("adamw", "adamw-cosine") and spec.seeds == 2
    assert spec.transformer_baselines == spec.baselines
    assert S.tuning_seed(spec) == 100 and S.report_seeds(spec) == [101, 102]
    assert not spec.fixed_adamw and spec.untrained_everywhere
    # the middle 3 of adamw's grid hold its tuned LR on the full suite's held-out cells
    assert S._grid("adamw", spec.grid_points)[0] < 9.79e-4 < S._grid("adamw", 3)[-1]
    assert S._grid("adamw-cosine", spec.grid_points)[-1] >= 9e-3
    assert "adamw-cosine" in S.SUITES["full"].baselines


def _group(curves):
    """A cached group of one LR: curves [seeds, steps]."""
    curves = np.asarray(curves, np.float64)
    return {"losses": [curves.tolist()], "test_loss": [[0.0] * len(curves)],
            "test_accuracy": [[0.0] * len(curves)], "diverged": [[False] * len(curves)],
            "wall_s": 1.0, "runs": len(curves), "steps": curves.shape[1]}


def test_a_run_ending_far_above_its_initial_loss_is_marked_diverged():
    t = np.linspace(0, 1, 200)
    good = 2.3 - 1.8 * t                        # 2.3 -> 0.5
    stalled = np.full(200, 2.303)               # never leaves the zero-readout loss
    blown = 2.3 + 201.4 * t                     # 2.3 -> 203.7
    assert not S._summary(_group([good, stalled]), 0)["diverged"]
    row = S._summary(_group([good, blown]), 0)
    assert row["diverged"] and row["initial_train_loss"] == [2.3, 2.3]
    assert S._summary(_group([good, np.r_[good[:-1], np.nan]]), 0)["diverged"]
    np.testing.assert_array_equal(S.blew_up([2.3, 2.3, 2.3, 2.3], [3.4, 3.5, np.inf, np.nan]),
                                  [False, True, True, True])
    # the report marks it, also for documents written before initial losses were stored
    from eval.report import diverged
    old = {k: v for k, v in row.items() if k != "initial_train_loss"}
    assert diverged(dict(old, diverged=False))
    assert not diverged(S._summary(_group([good, good]), 0))


def test_a_run_that_spikes_mid_run_and_recovers_is_marked_though_its_final_loss_is_good():
    """The 25x longer cell's failure: a seed climbs to ~86x its initial loss mid-run and ends
    low. The final-loss divergence test cannot see it; the peak can, also where the stored
    per-seed curves are strided past the spike."""
    from eval.report import diverged, loss_columns, peak_ratio, spiked
    steps = 2000                                  # stored curves keep every 4th step
    good = 2.3 * np.exp(-np.linspace(0, 3, steps))
    spike = good.copy()
    spike[1001] = 198.8                           # one step, between stored points
    row = S._summary(_group([good, spike]), 0)
    assert not diverged(row)                      # it ends where the stable seed ends
    assert row["peak_train_loss"] == pytest.approx([2.3, 198.8])
    assert peak_ratio(row) == pytest.approx(198.8 / 2.3)
    assert max(max(c) for c in row["seed_curves"]) < 2.3 + 1e-9    # the curves miss it
    assert spiked(row) and "§" in loss_columns({"lo": row}, ["lo"])[0]
    calm = S._summary(_group([good, good]), 0)
    assert not spiked(calm) and peak_ratio(calm) == pytest.approx(1.0)
    # a non-finite step counts as 1e3, and a diverged row is marked † only
    nan_mid = good.copy()
    nan_mid[500] = np.nan
    assert S._summary(_group([nan_mid]), 0)["peak_train_loss"] == [1e3]
    blown = S._summary(_group([good, 2.3 + 201.4 * np.linspace(0, 1, steps)]), 0)
    assert diverged(blown) and not spiked(blown)
    # a document written before peaks were stored falls back to its stored curves
    old = {k: v for k, v in row.items() if k != "peak_train_loss"}
    assert peak_ratio(old) == pytest.approx(1.0)
    old["seed_curves"][1][250] = 50.0
    assert spiked(old)
    # the verdict table marks the LO's row and names the cell on its summary line
    from eval.report import _against_adamw_md
    doc = _doc({"mlp-fmnist8-w64-d3": {"adamw": good, "μLO": spike}})
    doc["cells"][0]["optimizers"]["μLO"] = dict(row, task="mlp-fmnist8-w64-d3")
    text = "\n".join(_against_adamw_md(doc))
    assert "| μLO | wider | mlp-fmnist8-w64-d3 | 100 | 0.123 § | adamw 0.123 |" in text
    assert text.rstrip().count("86.4x / 1x |") == 1
    assert "**unstable mid-run** on mlp-fmnist8-w64-d3 (peak 86.4x its initial loss)" in text
    # a summary row with no losses at all (a model card's eval rows) is not marked
    bare = {"final_mean": 0.4, "final_std": 0.01, "diverged": False}
    assert np.isnan(peak_ratio(bare)) and not spiked(bare)
    assert loss_columns({"lo": bare}, ["lo"]) == ["**0.400 ± 0.010**"]


def _doc(rows_per_cell, axes=None):
    """A results document from {cell task: {optimizer: (final curve end, curve)}}."""
    cells = []
    for i, (task, opts) in enumerate(rows_per_cell.items()):
        cells.append({"axis": (axes or {}).get(task, "wider"), "task": task, "steps": 100,
                      "optimizers": {n: dict(S._summary(_group([c, c]), 0), task=task)
                                     for n, c in opts.items()}})
    return {"suite": "dev", "los": [{"label": "μLO", "path": "x", "config": {"mup": True},
                                     "meta_step": 1, "digest": "d", "meta_config": {}}],
            "baselines": ["adamw", "adamw-cosine"], "report_seeds": [1, 2], "cells": cells,
            "commit": "c", "command": "cmd"}


def _curve(end, steps=100):
    return 2.3 * (end / 2.3) ** np.linspace(0, 1, steps)    # geometric decay 2.3 -> end


def test_lo_is_judged_against_the_better_adamw_form_per_cell():
    from eval.report import against_adamw, markdown
    doc = _doc({
        # constant AdamW is better here, and the LO beats only cosine
        "mlp-fmnist8-w1024-d3": {"adamw": _curve(0.40), "adamw-cosine": _curve(0.45),
                           "μLO": _curve(0.42)},
        # cosine is better here and the LO beats it
        "mlp-fmnist8-w128-d15": {"adamw": _curve(0.60), "adamw-cosine": _curve(0.50),
                           "μLO": _curve(0.45)},
        # the better form diverged: the other one counts; a diverged LO loses
        "mlp-fmnist8-w128-d3": {"adamw": _curve(0.30), "adamw-cosine": 2.3 + np.linspace(0, 200, 100),
                          "μLO": 2.3 + np.linspace(0, 5, 100)},
    })
    rows = against_adamw(doc)
    assert [(r["adamw"], r["win"]) for r in rows] == [
        ("adamw", False), ("adamw-cosine", True), ("adamw", False)]
    assert rows[2]["lo_diverged"]
    a, lo = (doc["cells"][1]["optimizers"][n]["mean_curve"] for n in ("adamw-cosine", "μLO"))
    assert rows[1]["speedup"] == pytest.approx(S.speedup(a, lo)) and rows[1]["speedup"] > 1
    md = markdown(doc, [])
    r = rows[1]
    assert (f"| μLO | wider | mlp-fmnist8-w128-d15 | 100 | {r['lo_final']:.3f} | adamw-cosine "
            f"{r['adamw_final']:.3f} | win |") in md
    assert "- **μLO**: wins 1 of 3 cells against the better tuned AdamW; geometric-mean " \
           "speedup 0.00 (0: on some cell it never reaches AdamW's lowest point)" in md
    assert rows[2]["lo_final"] > 1.5 * 2.3
    assert (f"| μLO | wider | mlp-fmnist8-w128-d3 | 100 | {rows[2]['lo_final']:.3f} † | adamw "
            f"{rows[2]['adamw_final']:.3f} | loss |") in md


def test_time_to_target_weighs_steps_by_each_rows_measured_step_time():
    from eval.report import against_adamw, markdown
    doc = _doc({"mlp-fmnist8-w1024-d3": {"adamw": _curve(0.40), "μLO": _curve(0.30)},
                "mlp-fmnist8-w128-d15": {"adamw": _curve(0.40), "μLO": _curve(0.50)}})
    for c in doc["cells"]:                       # the LO's step costs 4x AdamW's
        c["optimizers"]["adamw"]["wall_s_per_step"] = 0.01
        c["optimizers"]["μLO"]["wall_s_per_step"] = 0.04
    win, never = against_adamw(doc)
    n_ref, n_lo = S.steps_to_target(doc["cells"][0]["optimizers"]["adamw"]["mean_curve"],
                                    doc["cells"][0]["optimizers"]["μLO"]["mean_curve"])
    assert n_ref == 100 and n_lo < 100 and win["speedup"] == pytest.approx(100 / n_lo)
    assert win["adamw_s"] == pytest.approx(1.0) and win["lo_s"] == pytest.approx(0.04 * n_lo)
    # a 1.2x step speedup at 4x the step cost is a wall-clock loss
    assert win["speedup"] > 1 and win["wallclock_speedup"] == pytest.approx(
        win["speedup"] / 4) and win["wallclock_speedup"] < 1
    assert never["lo_s"] is None and never["wallclock_speedup"] == 0.0
    md = markdown(doc, [])
    assert f"| {win['speedup']:.2f} | 1.0 | {win['lo_s']:.1f} | {win['wallclock_speedup']:.2f} |" in md
    assert "wall-clock: faster to AdamW's lowest loss on 0 of 2 timed cells, geometric-mean " \
           "wall-clock speedup 0.00" in md


def test_each_optimizer_has_one_color_in_every_panel(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from eval import report as R
    seen = {}                       # label -> {color}, over every line and bar of every figure
    real = Figure.savefig

    def record(fig, fname, *a, **k):
        for ax in fig.axes:
            for line in ax.get_lines():
                seen.setdefault(line.get_label(), set()).add(
                    matplotlib.colors.to_hex(line.get_color()))
            for bars in ax.containers:
                seen.setdefault(bars.get_label(), set()).add(
                    matplotlib.colors.to_hex(bars.patches[0].get_facecolor()))
        for leg in fig.legends:
            for h, t in zip(leg.legend_handles, leg.get_texts()):
                seen.setdefault(t.get_text(), set()).add(matplotlib.colors.to_hex(h.get_color()))
        return real(fig, fname, *a, **k)
    monkeypatch.setattr(Figure, "savefig", record)
    # the in-distribution panel has untrained rows that the wider panel lacks, and the
    # panels list their optimizers in different orders: the old color cycle shifted here
    doc = _doc({"mlp-fmnist8-w32-d3": {"adamw": _curve(0.5), "μLO": _curve(0.45),
                                 "μLO (untrained)": _curve(2.0), "SP LO": _curve(0.5),
                                 "SP LO (untrained)": _curve(2.2)},
                "mlp-fmnist8-w256-d3": {"SP LO": _curve(0.9), "μLO": _curve(0.4),
                                  "adamw": _curve(0.42)},
                "mlp-fmnist8-w32-d15": {"μLO": _curve(0.9), "adamw": _curve(0.6), "SP LO": _curve(1)}},
               axes={"mlp-fmnist8-w32-d3": "in-distribution", "mlp-fmnist8-w32-d15": "deeper"})
    for c in doc["cells"]:
        for o in c["optimizers"].values():
            o["speedup_vs_adamw"] = 1.0
    plots = R._plots(doc, tmp_path)
    assert plots == ["loss_curves.png", "final_loss_vs_width.png", "final_loss_vs_depth.png",
                     "speedup.png"]
    names = {"adamw", "μLO", "μLO (untrained)", "SP LO", "SP LO (untrained)"}
    assert names <= set(seen)
    for name in names:
        assert len(seen[name]) == 1, (name, seen[name])
    colors = [next(iter(seen[n])) for n in names]
    assert len(set(colors)) == len(names)          # and no two optimizers share one


def test_make_lo_tells_the_lo_the_runs_step_count():
    # mulo-frac-cpu reads the fraction of training done: told 20 steps, its 10th update is
    # the one make_from_config gives at num_steps=20, and differs from a 5000-step run's
    import jax
    import jax.numpy as jnp

    import lopt
    from meta_train.tasks import get_task
    (lo,) = S.load_los(["mulo-frac-cpu"])
    task = get_task("mlp-digits8-w16-d2")
    params = task.init(jax.random.PRNGKey(0))
    grads = jax.tree.map(lambda p: 0.1 * jnp.cos(p + 1.0), params)

    def tenth_update(opt):
        state = opt.init(params)
        for _ in range(10):
            upd, state = opt.update(grads, state, params)
        return np.concatenate([np.ravel(x) for x in jax.tree.leaves(upd)])
    short = tenth_update(S.make_lo(lo.theta, lo.config, task.roles, 20))
    want = tenth_update(lopt.make_from_config(lo.theta, lo.config, roles=task.roles,
                                              mup_in="model", num_steps=20))
    np.testing.assert_array_equal(short, want)
    long_ = tenth_update(S.make_lo(lo.theta, lo.config, task.roles, 5000))
    assert np.abs(short - long_).max() > 1e-3 * np.abs(long_).max()


def test_cosine_schedule_tunes_every_baseline_under_its_own_name(smoke_eval):
    root, doc, _ = smoke_eval
    cos = S.run_suite([str(root / "run")], "smoke", root / "ev", progress=False,
                      overrides={"schedule": "cosine", "axes": ("wider",)},
                      baselines=("adamw", "muadam"))
    opts = cos["cells"][0]["optimizers"]
    assert list(opts)[:3] == ["adamw-cosine", "muadam-cosine", "adamw@1e-3"]
    assert opts["adamw-cosine"]["schedule"] == "cosine"
    assert opts["adamw-cosine"]["grid"] == S._grid("adamw", 2)
    const = [c for c in doc["cells"] if c["axis"] == "wider"][0]["optimizers"]
    # the fixed-LR row is shared with the constant run's cache; the scheduled rows are not
    assert opts["adamw@1e-3"]["final_mean"] == const["adamw@1e-3"]["final_mean"]
    assert opts["adamw-cosine"]["final_mean"] != const["adamw"]["final_mean"]
    seen = [json.loads(f.read_text())["key"] for f in (root / "ev" / "cells").glob("*.json")]
    assert any(k.get("schedule") == "cosine" and k["opt"] == "muadam" for k in seen)
    with pytest.raises(S.SuiteError, match="same optimizer twice"):
        S.run_suite([str(root / "run")], "smoke", root / "ev", progress=False,
                    overrides={"schedule": "cosine"}, baselines=("adamw", "adamw-cosine"))


def test_mutransfer_runs_end_to_end_and_the_report_says_so(smoke_eval):
    from eval.report import markdown
    root, _, _ = smoke_eval
    doc = S.run_suite([str(root / "run")], "smoke", root / "ev", progress=False,
                      baselines=("muadam",), overrides={"wider": (2, 4), "mutransfer_above": 2,
                                                       "axes": ("wider",)})
    two, four = (c["optimizers"]["muadam"] for c in doc["cells"])
    assert "mutransfer_from_width" not in two and two["grid"] == S._grid("muadam", 2)
    assert four["mutransfer_from_width"] == 32 and four["grid"][1] == two["lr"]
    md = markdown(dict(doc, commit="c", command="c"), [])
    assert "(μTransfer from w32)" in md and "μTransfer: on wider cells above 2x" in md


def test_every_cell_records_its_data_source_in_results_report_and_summary(smoke_eval):
    import csv

    from eval.summary import load, summary
    root, doc, _ = smoke_eval
    assert [c["source"] for c in doc["cells"]] == ["sklearn-digits 8x8"] * len(doc["cells"])
    back = json.loads((root / "ev" / "results.json").read_text())
    assert {c["source"] for c in back["cells"]} == {"sklearn-digits 8x8"}
    with open(root / "ev" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["source"] for r in rows} == {"sklearn-digits 8x8"}
    md = (root / "ev" / "report.md").read_text().splitlines()
    assert "- data: sklearn-digits 8x8 (every cell)" in md[:md.index("## in-distribution")]
    lines = summary(load(root / "ev"), root / "ev")
    assert lines[1].startswith("Final train loss on sklearn-digits 8x8, mean of seeds 1,2")


def test_report_names_each_data_source_with_its_cells():
    from eval.report import _data_line
    doc = {"cells": [{"task": "mlp-fmnist8-w32-d3", "source": "fashion-mnist 8x8 (packaged)"},
                     {"task": "mlp-digits8-w64-d2", "source": "sklearn-digits 8x8"},
                     {"task": "mlp-fmnist8-w64-d3", "source": "fashion-mnist 8x8 (packaged)"}]}
    assert _data_line(doc) == ["- data: fashion-mnist 8x8 (packaged) (mlp-fmnist8-w32-d3, "
                               "mlp-fmnist8-w64-d3); sklearn-digits 8x8 (mlp-digits8-w64-d2)"]
    assert _data_line({"cells": [{"task": "t"}]}) == []     # results from before sources


def test_missing_data_is_one_error_line_before_any_training(tmp_path, monkeypatch, capsys):
    from eval.cli import main
    from meta_train import data as D
    # this machine without the packaged 8x8 arrays and without the Debian idx files
    monkeypatch.setattr(D, "packaged_path", lambda resolution: tmp_path / "absent.npz")
    monkeypatch.setattr(D, "fashion_mnist_dir", lambda: None)
    D.image_dataset.cache_clear()
    S.data_source.cache_clear()
    try:
        rc = main(["--lo", "mulo-cpu", "--suite", "smoke", "--out", str(tmp_path / "ev"),
                   "--no-progress"])
    finally:
        D.image_dataset.cache_clear()
        S.data_source.cache_clear()
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("error: Fashion-MNIST 8x8 needs the Fashion-MNIST idx files")
    assert "dataset-fashion-mnist" in err and "MULO_FASHION_MNIST_DIR" in err
    assert not (tmp_path / "ev" / "cells").exists()


def test_lo_digest_covers_theta_and_every_lo_config_field():
    import jax

    import lopt
    base = lopt.LOConfig()
    theta = lopt.init_theta(jax.random.PRNGKey(0), base)
    # one other value per field: a new LOConfig field must be added here
    other = {"mup": False, "hidden_size": 16, "hidden_layers": 3, "exp_mult": 2e-3,
             "step_mult": 0.5, "time_features": "fraction", "tau_clamp": 100,
             "schedule": "cosine", "mup_base": 256.0, "depth_ref": 2, "horizon_ref": 500,
             "horizon_power": 0.3, "features": "compact"}
    # options defined for the compact network only: changed from a compact config
    compact_only = {"magnitude": False, "output_norm": True, "orthogonalize": True}
    assert set(other) | set(compact_only) == {f.name for f in dataclasses.fields(lopt.LOConfig)}
    digests = {S.lo_digest(theta, base)}
    for field, value in other.items():
        digests.add(S.lo_digest(theta, dataclasses.replace(base, **{field: value})))
    compact = dataclasses.replace(base, features="compact")
    for field, value in compact_only.items():
        digests.add(S.lo_digest(theta, dataclasses.replace(compact, **{field: value})))
    other.update(compact_only)
    nudged = jax.tree.map(lambda x: x, theta)
    leaf = next(k for k, v in nudged.items() if getattr(v, "size", 0))
    nudged[leaf] = nudged[leaf].at[(0,) * nudged[leaf].ndim].add(1e-6)
    digests.add(S.lo_digest(nudged, base))
    assert len(digests) == len(other) + 2
    # the digest is a stable name: mulo-cpu's is the one its committed reports (and cached
    # groups) record, so a change to how digests are made is seen, not silently re-keyed
    (mulo,) = S.load_los(["mulo-cpu"])
    shipped = {lo["label"]: lo["digest"] for lo in json.loads(
        (Path(__file__).resolve().parents[2] / "checkpoints" / "eval-full-lm" /
         "results.json").read_text())["los"]}
    assert mulo.digest == shipped["μLO"] == "449451a33aeaa444"


def test_cache_made_on_other_data_is_never_reused(tmp_path, monkeypatch):
    import jax

    import lopt
    config = lopt.LOConfig()
    lo = S.LearnedOpt("μLO", "x", lopt.init_theta(jax.random.PRNGKey(1), config), config,
                      {"config": {"seed": 3}})
    computed = []

    def compute(self, task_name, make, steps, lrs, seeds, needs_activations, pass_loss=False):
        computed.append(task_name)
        return {"losses": [[[float(len(computed))] * steps] * len(seeds)] * len(lrs)}
    monkeypatch.setattr(S.Runner, "_compute", compute)
    source = {"mlp-fmnist8-w32-d3": "fashion-mnist 8x8 (packaged)",
              "mlp-fmnist8-w32-d3-sp": "fashion-mnist 8x8 (packaged)"}
    _fake_data(monkeypatch, lambda task: source[task])
    runner = S.Runner(tmp_path)
    runs = {"lo": lambda: runner.run_lo("mlp-fmnist8-w32-d3", lo, 4, [1]),
            "lo-init": lambda: runner.run_lo("mlp-fmnist8-w32-d3", lo, 4, [1], untrained=True),
            "adamw": lambda: runner.run_baseline("mlp-fmnist8-w32-d3-sp", "adamw", 4, [1e-3],
                                                 [1])}
    first = {k: f()["losses"] for k, f in runs.items()}
    assert len(computed) == 3
    assert {k: f()["losses"] for k, f in runs.items()} == first and len(computed) == 3
    keys = [json.loads(f.read_text())["key"] for f in (tmp_path / "cells").glob("*.json")]
    assert {k["source"] for k in keys} == {"fashion-mnist 8x8 (packaged)"}
    init = next(k for k in keys if k["opt"] == "lo-init")
    assert init["lo_digest"] != lo.digest          # the untrained theta's own digest
    # the same task names on other data: every group runs again
    source.update({k: "sklearn-digits 8x8" for k in source})
    again = {k: f()["losses"] for k, f in runs.items()}
    assert len(computed) == 6 and all(again[k] != first[k] for k in runs)
    assert len(list((tmp_path / "cells").glob("*.json"))) == 6


def test_cells_for_reads_lm_names_and_names_without_a_width():
    spec = dataclasses.replace(S.SUITES["quick"], wider=(4,), deeper=3, longer=2)
    lm = S.cells_for({"tasks": ["lm-fortunes-d64-l2", "lm-fortunes-d128-l2-h4"],
                      "es": {"max_horizon": 300}}, spec)
    by_axis = {c.axis: c for c in lm}
    # on LM names -d is d_model and -l the depth: wider multiplies d_model, deeper the layers
    assert by_axis["wider"].task == "lm-fortunes-d512-l2-h4"
    assert by_axis["deeper"].task == "lm-fortunes-d128-l6-h4"
    assert by_axis["longer"] == S.Cell("longer", "lm-fortunes-d128-l2-h4", 600)
    rf = S.cells_for({"tasks": ["rf-s1.0-n256"], "es": {"max_horizon": 100}}, spec)
    assert [c.axis for c in rf] == ["in-distribution", "longer"]


def test_full_suite_has_transformer_lowrank_and_other_data_cells_with_their_baselines():
    cells = S.cells_for(PRESETS["cpu"].to_dict(), S.SUITES["full"])
    lm = [c for c in cells if c.axis == "transformer"]
    assert [c.task for c in lm] == ["lm-fortunes-d64-l2", "lm-fortunes-d256-l2",
                                    "lm-fortunes-d512-l2", "lm-fortunes-d64-l6"]
    assert all(set(c.baselines) == {"adamw", "adamw-cosine", "muadam", "muon", "schatten"}
               for c in lm)
    (low,) = [c for c in cells if c.axis == "transformer-lowrank"]
    assert low.task.endswith("-r16") and low.baselines == ("adamw", "adamw-cosine", "riemannian")
    (other,) = [c for c in cells if c.axis == "other-data"]
    assert other == S.Cell("other-data", "mlp-fmnist28-w1024-d3", 500)   # suite baselines


def _fake_data(monkeypatch, source):
    """Tasks read as if their data came from ``source(task)`` (a name), with stand-in digests
    of their data and init, so tests run without the data installed."""
    monkeypatch.setattr(S, "data_source", source)
    monkeypatch.setattr(S, "inputs_key", lambda task: {"init": "init of " + task,
                                                       "data": "data of " + source(task)})


def _fake_compute(self, task_name, make, steps, lrs, seeds, needs_activations, pass_loss=False):
    curve = list(np.linspace(2.3, 1.0 + 0.01 * len(task_name), steps))
    n = len(lrs) * len(seeds)
    return {"losses": [[curve] * len(seeds)] * len(lrs),
            "test_loss": [[1.0] * len(seeds)] * len(lrs),
            "test_accuracy": [[0.5] * len(seeds)] * len(lrs),
            "diverged": [[False] * len(seeds)] * len(lrs), "wall_s": 1.0, "compile_s": 0.0,
            "runs": n, "steps": steps}


def test_fixed_cells_without_their_data_are_skipped_and_reported(tmp_path, monkeypatch):
    from meta_train.data import DataNotFoundError

    def source(task):
        if task.startswith("lm-"):
            raise DataNotFoundError("fortunes not found: apt install fortunes")
        return "test data"
    monkeypatch.setattr(S.Runner, "_compute", _fake_compute)
    _fake_data(monkeypatch, source)
    doc = S.run_suite(["mulo-cpu"], "full", tmp_path, progress=False, overrides={
        "axes": ("transformer", "transformer-lowrank", "other-data"),
        "transformer": ("lm-fortunes-d64-l2",), "baselines": ("adamw",)})
    assert [(c["axis"], c["task"]) for c in doc["cells"]] == [
        ("other-data", "mlp-fmnist28-w1024-d3")]
    assert [(s["axis"], s["task"]) for s in doc["skipped"]] == [
        ("transformer", "lm-fortunes-d64-l2"), ("transformer-lowrank", "lm-fortunes-d128-l2-r16")]
    assert "apt install fortunes" in doc["skipped"][0]["reason"]
    md = write_all(doc, tmp_path / "report", "test")["markdown"]
    assert "## transformer: `lm-fortunes-d64-l2` skipped" in md
    # a core axis without its data still stops the suite before any training
    _fake_data(monkeypatch, lambda task: source("lm-" + task))
    with pytest.raises(DataNotFoundError):
        S.run_suite(["mulo-cpu"], "full", tmp_path, progress=False,
                    overrides={"axes": ("wider",)})


def test_a_fixed_cell_runs_its_own_baselines_and_the_report_leaves_the_rest_blank(
        tmp_path, monkeypatch):
    monkeypatch.setattr(S.Runner, "_compute", _fake_compute)
    _fake_data(monkeypatch, lambda task: "test data")
    doc = S.run_suite(["mulo-cpu"], "full", tmp_path, progress=False, overrides={
        "axes": ("transformer-lowrank", "other-data"), "baselines": ("adamw", "muadam")})
    rows = {c["axis"]: list(c["optimizers"]) for c in doc["cells"]}
    assert rows["transformer-lowrank"][:3] == ["adamw", "adamw-cosine", "riemannian"]
    assert rows["other-data"][:2] == ["adamw", "muadam"]
    # riemannian trains AdamW's SP network with AdamW, at the LR AdamW tuned on this cell,
    # on every unfactored leaf; the LR is part of its cache key
    (low,) = [c for c in doc["cells"] if c["axis"] == "transformer-lowrank"]
    adamw, riem = low["optimizers"]["adamw"], low["optimizers"]["riemannian"]
    assert riem["task"] == adamw["task"] == "lm-fortunes-d128-l2-r16-sp"
    assert riem["adam_lr"] == adamw["lr"] and "adam_lr" not in adamw
    keys = [json.loads(f.read_text())["key"] for f in (tmp_path / "cells").glob("*.json")]
    assert {k.get("adam_lr") for k in keys if k["opt"] == "riemannian"} == {adamw["lr"]}
    md = write_all(doc, tmp_path / "report", "test")["markdown"]
    assert "## transformer-lowrank" in md and "riemannian" in md
    assert f"(AdamW at {adamw['lr']:.3g} on the other leaves)" in md


def test_bootstrap_interval_of_the_geomean_speedup_over_seeds():
    from eval.report import bootstrap_speedup, markdown
    a, lo = np.stack([_curve(0.4)] * 3), np.stack([_curve(0.3)] * 3)
    point = S.speedup(a.mean(0), lo.mean(0))
    assert point > 1
    # identical seeds: nothing to resample, the interval is the point
    assert bootstrap_speedup([(a, lo)], n=20) == pytest.approx((point, point))
    # seed spread widens it around the point estimate; a second cell enters the geo-mean
    a2 = np.stack([_curve(e) for e in (0.38, 0.40, 0.42)])
    lo2 = np.stack([_curve(e) for e in (0.30, 0.36, 0.42)])
    lo_ci, hi_ci = bootstrap_speedup([(a2, lo2), (a, lo)], n=400)
    p2 = np.sqrt(S.speedup(a2.mean(0), lo2.mean(0)) * point)
    assert lo_ci < p2 < hi_ci and hi_ci - lo_ci > 0.1
    # the report prints it next to the win count (the summaries store per-seed curves)
    doc = _doc({"mlp-fmnist8-w1024-d3": {"adamw": _curve(0.40), "μLO": _curve(0.30)}})
    assert doc["cells"][0]["optimizers"]["μLO"]["seed_curves"]
    assert (f"geometric-mean speedup {point:.2f} (95% bootstrap interval over seeds "
            f"{point:.2f}-{point:.2f})") in markdown(doc, [])


def test_cached_only_reports_what_is_done_and_lists_the_rest(tmp_path, monkeypatch):
    monkeypatch.setattr(S.Runner, "_compute", _fake_compute)
    _fake_data(monkeypatch, lambda task: "test data")
    ov = {"axes": ("other-data",)}
    S.run_suite(["mulo-cpu"], "full", tmp_path, progress=False, overrides=ov,
                baselines=("adamw",))
    n_cached = len(list((tmp_path / "cells").glob("*.json")))

    def never(*a, **k):
        raise AssertionError("cached_only trained something")
    monkeypatch.setattr(S.Runner, "_compute", never)
    doc = S.run_suite(["mulo-cpu", "SP=sp-lo-cpu"], "full", tmp_path, progress=False,
                      overrides=ov, baselines=("adamw", "muadam"), cached_only=True)
    assert len(list((tmp_path / "cells").glob("*.json"))) == n_cached
    (cell,) = doc["cells"]
    assert set(cell["optimizers"]) == {"adamw", "adamw@1e-3", "μLO"}
    assert {r["optimizer"] for r in doc["not_run"]} == {"SP", "muadam"}
    md = write_all(doc, tmp_path / "report", "test")["markdown"]
    assert "## Not run yet" in md and "other-data `mlp-fmnist28-w1024-d3` (500 steps): SP" in md
    with pytest.raises(S.SuiteError, match="nothing of this suite is cached"):
        S.run_suite(["mulo-cpu"], "full", tmp_path / "elsewhere", progress=False,
                    overrides=ov, cached_only=True)


def test_groups_cached_by_version_1_are_reused_and_say_their_test_metrics(tmp_path,
                                                                          monkeypatch):
    # a group written before the suite had versions (no "version" in its key): its training
    # runs are what version 2 computes, so it is reused, labelled with its test metrics
    computed = []

    def compute(self, task_name, make, steps, lrs, seeds, needs_activations, pass_loss=False):
        computed.append(task_name)
        return {"losses": [[[1.0] * steps] * len(seeds)] * len(lrs),
                "test_metrics": "whole test split"}
    monkeypatch.setattr(S.Runner, "_compute", compute)
    _fake_data(monkeypatch, lambda task: "fashion-mnist 8x8 (packaged)")
    runner = S.Runner(tmp_path)
    old_key = S.baseline_key("mlp-fmnist8-w32-d3-sp", "adamw", 4, [1e-3], [1])
    old = runner._file(old_key)
    old.write_text(json.dumps({"key": old_key, "losses": [[[7.0] * 4]]}))
    res = runner.run_baseline("mlp-fmnist8-w32-d3-sp", "adamw", 4, [1e-3], [1])
    assert computed == [] and res["losses"] == [[[7.0] * 4]]
    assert res["version"] == 1 and res["test_metrics"] == "8 sampled test batches"
    # a new group is computed and cached under the current version, which its key carries
    res = runner.run_baseline("mlp-fmnist8-w32-d3-sp", "adamw", 4, [3e-3], [1])
    assert computed == ["mlp-fmnist8-w32-d3-sp"] and res["version"] == S.SUITE_VERSION
    keys = [json.loads(f.read_text())["key"] for f in (tmp_path / "cells").glob("*.json")]
    assert sorted(k.get("version", 1) for k in keys) == [1, S.SUITE_VERSION]
    group = dict(res, test_loss=[[0.5]], test_accuracy=[[0.9]], diverged=[[False]],
                 wall_s=1.0, runs=1, steps=4)
    summary = S._summary(group, 0)
    assert (summary["suite_version"], summary["test_metrics"]) == (2, "whole test split")


def test_cell_plan_names_the_defining_lo_and_flags_an_lo_trained_on_other_cells():
    """A second LO meta-trained with a longer horizon runs on the first LO's cells; the plan
    printed before training says so instead of silently changing the cells' step counts."""
    spec = dataclasses.replace(S.SUITES["quick"], axes=("wider", "longer"), wider=(8,),
                               longer=10)
    short = {"tasks": ["mlp-fmnist8-w128-d3"], "es": {"max_horizon": 500}}
    long_ = {"tasks": ["mlp-fmnist8-w128-d3"], "es": {"max_horizon": 2000}}
    los = [S.LearnedOpt("A", "a", None, None, {"config": short}),
           S.LearnedOpt("B", "b", None, None, {"config": long_}),
           S.LearnedOpt("C", "c", None, None, {"config": short})]
    cells = S.cells_for(short, spec)
    lines = S.cell_plan(los, cells, spec)
    assert lines[0] == "cells (defined by A's meta-training config):"
    assert "mlp-fmnist8-w1024-d3" in lines[1] and lines[1].rstrip().endswith("500 steps")
    assert lines[2].rstrip().endswith("5000 steps")
    notes = [ln for ln in lines if ln.startswith("note:")]
    assert len(notes) == 1 and notes[0].startswith("note: B was meta-trained with horizon 2000")


def test_cli_transformer_override_runs_only_the_named_lm_cells(tmp_path, capsys):
    """--transformer picks the LM cells; a bad name is one error line, not a traceback."""
    from eval.cli import main
    lo = "checkpoints/mulo-cpu"
    assert main(["--suite", "full", "--lo", lo, "--axes", "transformer", "--out",
                 str(tmp_path), "--transformer", "lm-fortunes-d64-lx", "--cached-only"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown task 'lm-fortunes-d64-lx'"), err
    with pytest.raises(SystemExit):
        main(["--suite", "full", "--lo", lo, "--out", str(tmp_path), "--transformer", "mlp-x"])
    spec = dataclasses.replace(S.SUITES["full"], axes=("transformer",),
                               transformer=("lm-fortunes-d64-l6",))
    assert [c.task for c in S.cells_for(PRESETS["cpu"].to_dict(), spec)] == [
        "lm-fortunes-d64-l6"]


def test_schatten_groups_record_that_they_were_given_layer_inputs(tmp_path, monkeypatch):
    # groups computed before LM tasks supplied layer inputs (the criterion then always picks
    # p = 1) have no such key entry, so they are recomputed rather than reused
    monkeypatch.setattr(S.Runner, "_compute", _fake_compute)
    S.run_suite(["mulo-cpu"], "full", tmp_path, progress=False, overrides={
        "axes": ("transformer",), "transformer": ("lm-stdlib-d32-l1-c16-h2",),
        "baselines": ("adamw", "schatten")})
    keys = [json.loads(f.read_text())["key"] for f in (tmp_path / "cells").glob("*.json")]
    assert {k["activations"] for k in keys if k["opt"] == "schatten"} == {"layer inputs"}
    assert all("activations" not in k for k in keys if k["opt"] != "schatten")


def test_a_sweep_split_into_groups_joins_to_the_whole_sweep(tmp_path, monkeypatch):
    # --group-runs: a 5-LR sweep on 2 seeds with at most 4 runs per group trains as groups
    # of 2, 2 and 1 LRs, each cached on its own; joined, the sweep reads as one group
    calls = []

    def compute(self, task_name, make, steps, lrs, seeds, needs_activations, pass_loss=False):
        calls.append(list(lrs))
        return {"losses": [[[lr * 100 + s] * steps for s in seeds] for lr in lrs],
                "test_loss": [[lr] * len(seeds) for lr in lrs],
                "test_accuracy": [[0.5] * len(seeds) for lr in lrs],
                "diverged": [[False] * len(seeds) for lr in lrs],
                "wall_s": 2.0 * len(lrs), "compile_s": 1.0, "runs": len(lrs) * len(seeds),
                "steps": steps}
    monkeypatch.setattr(S.Runner, "_compute", compute)
    _fake_data(monkeypatch, lambda task: "test data")
    lrs = [0.01, 0.02, 0.03, 0.04, 0.05]
    task = "mlp-digits8-w32-d2-sp"
    res = S.Runner(tmp_path / "a", group_runs=4).run_baseline(task, "adamw", 3, lrs, [0, 1])
    assert calls == [[0.01, 0.02], [0.03, 0.04], [0.05]]
    # three groups and the joined sweep, which a report without --group-runs finds
    assert len(list((tmp_path / "a" / "cells").glob("*.json"))) == 4
    assert S.Runner(tmp_path / "a", cached_only=True).run_baseline(
        task, "adamw", 3, lrs, [0, 1])["losses"] == res["losses"]
    whole = S.Runner(tmp_path / "b").run_baseline(task, "adamw", 3, lrs, [0, 1])
    for k in ("losses", "test_loss", "test_accuracy", "diverged"):
        assert res[k] == whole[k], k
    assert (res["runs"], res["wall_s"], res["compile_s"], res["groups"]) == (10, 10.0, 3.0, 3)
    # a killed sweep keeps its finished groups: only the missing one trains again
    key = {**S.baseline_key(task, "adamw", 3, [0.05], [0, 1]), "version": S.SUITE_VERSION}
    runner = S.Runner(tmp_path / "a")
    runner._file(key).unlink()
    runner._file({**key, "lrs": lrs}).unlink()
    calls.clear()
    S.Runner(tmp_path / "a", group_runs=4).run_baseline(task, "adamw", 3, lrs, [0, 1])
    assert calls == [[0.05]]
    # a sweep cached whole is reused as it is, whatever the group size
    calls.clear()
    again = S.Runner(tmp_path / "b", group_runs=1).run_baseline(task, "adamw", 3, lrs, [0, 1])
    assert calls == [] and again["losses"] == whole["losses"]
    with pytest.raises(S.SuiteError, match="group_runs must be at least 1"):
        S.Runner(tmp_path / "c", group_runs=0)
    # more seeds on one LR than a group holds (report seeds; an LO's runs): groups of seeds
    calls.clear()
    seeds = [1, 2, 3]
    split = S.Runner(tmp_path / "d", group_runs=2).run_baseline(task, "adamw", 3, [0.01, 0.02],
                                                                seeds)
    assert calls == [[0.01], [0.01], [0.02], [0.02]]
    one = S.Runner(tmp_path / "e").run_baseline(task, "adamw", 3, [0.01, 0.02], seeds)
    for k in ("losses", "test_loss", "test_accuracy", "diverged"):
        assert split[k] == one[k], k
    assert (split["runs"], split["groups"]) == (6, 4)


def test_lo_groups_record_a_depth_that_differs_from_the_matrix_count():
    # transformers: the 1/depth rule reads residual blocks, so groups cached when it read the
    # 12 (36) hidden matrices are recomputed; MLPs: both counts agree and old groups stay valid
    import lopt
    rule = lopt.LOConfig(mup_base=512.0, depth_ref=2)
    # (lm-stdlib-*: the suite's lm-fortunes-* models on the corpus that always ships)
    assert S._depth_rule_key("lm-stdlib-d64-l2", rule) == 2
    assert S._depth_rule_key("lm-stdlib-d64-l6", rule) == 6
    assert S._depth_rule_key("mlp-fmnist8-w128-d16", rule) is None
    assert S._depth_rule_key("lm-stdlib-d64-l6", lopt.LOConfig()) is None
    assert S._depth_rule_key("lm-stdlib-d64-l6", lopt.MUVELO) is None


def test_a_best_lr_at_a_grid_end_widens_the_sweep_until_it_is_inside():
    # final loss as a function of the LR, lowest at 8: the sweep [1, 2, 4] ends at its best
    curve = {1.0: 3.0, 2.0: 2.0, 4.0: 1.0, 8.0: 0.5, 16.0: 0.9, 32.0: 5.0, 0.5: 4.0}
    ran = []

    def run_one(lr):
        ran.append(lr)
        return {"losses": [[np.full(20, curve[lr])]], "wall_s": 2.0, "compile_s": 1.0}
    grid, finals, extra = S.extend_at_edges(run_one, [1.0, 2.0, 4.0], [3.0, 2.0, 1.0],
                                            (1.0, 2.0, 4.0, 8.0), 2)
    assert ran == [8.0, 16.0] and grid == [1.0, 2.0, 4.0, 8.0, 16.0] and extra == 6.0
    assert grid[int(np.argmin(finals))] == 8.0
    # at most `steps` more points, then the best may still sit at the end (reported with ‡)
    ran.clear()
    grid, _, _ = S.extend_at_edges(run_one, [1.0, 2.0, 4.0], [3.0, 2.0, 1.0], (1.0, 2.0), 1)
    assert ran == [8.0] and grid[-1] == 8.0
    # the lower end widens downwards; an inside best or 0 steps runs nothing
    ran.clear()
    grid, finals, _ = S.extend_at_edges(run_one, [1.0, 2.0], [0.1, 2.0], (1.0, 2.0), 2)
    assert ran == [0.5] and grid == [0.5, 1.0, 2.0] and finals[0] == 4.0
    ran.clear()
    assert S.extend_at_edges(run_one, [1.0, 2.0, 4.0], [3.0, 1.0, 2.0], (1.0, 2.0), 2)[2] == 0
    assert S.extend_at_edges(run_one, [1.0, 2.0], [3.0, 1.0], (1.0, 2.0), 0)[0] == [1.0, 2.0]
    assert ran == []


def test_a_group_another_live_process_computes_is_busy_and_a_killed_ones_lock_is_free(
        tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from eval.cache import is_held, try_lock
    monkeypatch.setattr(S.Runner, "_compute", _fake_compute)
    _fake_data(monkeypatch, lambda task: "test data")
    runner = S.Runner(tmp_path)
    key = {**S.baseline_key("mlp-fmnist8-w32-d3-sp", "adamw", 4, [1e-3], [1]),
           "version": S.SUITE_VERSION}
    lock = runner._file(key).with_suffix(".lock")

    def go():
        return runner.run_baseline("mlp-fmnist8-w32-d3-sp", "adamw", 4, [1e-3], [1])
    # another process holds the group, then is killed mid-group (SIGKILL: no cleanup)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, json, os, sys; "
         f"fd = os.open({str(lock)!r}, os.O_CREAT | os.O_RDWR); "
         "fcntl.flock(fd, fcntl.LOCK_EX); "
         "os.write(fd, json.dumps({'pid': os.getpid(), 'host': 'h', 'since': 0}).encode()); "
         "print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert is_held(lock)
    with pytest.raises(S.Busy, match=f"being computed by pid {holder.pid} on h"):
        go()
    holder.kill()
    holder.wait()
    assert lock.exists() and not is_held(lock)          # its file stays, unlocked
    assert go()["runs"] == 1
    assert not lock.exists() and runner._file(key).is_file()
    # a lock held through another open file in this process (another thread's) is busy too
    other = {**key, "lrs": [2e-3]}
    fd = try_lock(runner._file(other).with_suffix(".lock"))
    try:
        with pytest.raises(S.Busy):
            runner._cached(other, lambda: {})
        assert try_lock(runner._file(other).with_suffix(".lock")) is None
    finally:
        os.close(fd)


def test_two_processes_sharing_an_out_split_the_groups_and_report_the_same(tmp_path,
                                                                           monkeypatch):
    """Two runs of one suite on one --out (here threads: a lock held by a live pid is busy
    for every other caller) compute each group once between them and both report every
    row; a wider cell waits for the LR it transfers from rather than tune a full grid."""
    import threading
    calls, mutex = [], threading.Lock()
    at_d512 = threading.Event()

    def slow(self, task_name, make, steps, lrs, seeds, needs_activations, pass_loss=False):
        with mutex:
            calls.append((threading.current_thread().name, task_name, tuple(lrs), tuple(seeds)))
        # the μP d256 sweep ends only once the other run has reached the d512 cell, so that
        # run meets it in progress (and both runs have work)
        if task_name.startswith("lm-fortunes-d512-l2"):
            at_d512.set()
        if task_name == "lm-fortunes-d256-l2" and len(lrs) > 1:
            assert at_d512.wait(timeout=60), "the other run never reached d512"
        res = _fake_compute(self, task_name, make, steps, lrs, seeds, needs_activations)
        # the μP tasks' best LR moves with width (d64: 0.0306, wider: 0.00979), so an LR
        # transferred from the wrong width shows
        best = 0.0306 if "d64" in task_name else 0.00979
        res["losses"] = [[list(np.asarray(c) + (abs(np.log10(lr / best)) if lr else 0.0))
                          for c in per_lr] for lr, per_lr in zip(lrs, res["losses"])]
        return res
    monkeypatch.setattr(S.Runner, "_compute", slow)
    _fake_data(monkeypatch, lambda task: "test data")
    monkeypatch.setattr(S, "LOCK_POLL_S", 0.05)
    ov = {"axes": ("transformer",), "extend_edges": 0,
          "transformer": ("lm-fortunes-d64-l2", "lm-fortunes-d256-l2", "lm-fortunes-d512-l2")}
    docs, logs = {}, []

    def one(name):
        docs[name] = S.run_suite(["mulo-cpu"], "full", tmp_path, progress=False, overrides=ov,
                                 baselines=("adamw", "muadam"), log=logs.append)
    threads = [threading.Thread(target=one, args=(n,), name=n) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    groups = [c[1:] for c in calls]
    assert len(groups) == len(set(groups)), "a group was computed twice"
    assert {c[0] for c in calls} == {"a", "b"}, "one process did all the work"
    # the d512 μP sweep ran once, around the d256 LR: a run that did not wait for the d256
    # sweep another run was computing would sweep around the d64 LR (0.0306) instead
    (sweep,) = [c[2] for c in calls if c[1] == "lm-fortunes-d512-l2" and len(c[2]) > 1]
    assert sweep[1] == 0.00979
    rows = lambda d: {(c["task"], n, o["final_mean"], o.get("lr"))      # noqa: E731
                      for c in d["cells"] for n, o in c["optimizers"].items()}
    assert rows(docs["a"]) == rows(docs["b"]) and len(docs["a"]["cells"]) == 3
    for doc in docs.values():
        d512 = doc["cells"][2]["optimizers"]
        assert d512["muadam"]["mutransfer_from_width"] == 256
        assert len(d512["muadam"]["grid"]) == 3
        assert d512["adamw"]["grid"] == S._grid("adamw", 7)
    assert not list((tmp_path / "cells").glob("*.lock"))


def test_a_baseline_that_takes_adamws_lr_waits_for_adamw_another_process_is_tuning(
        tmp_path, monkeypatch):
    """Riemannian low-rank runs its other leaves at the LR AdamW tuned on the same cell: while
    another process tunes AdamW, it waits, rather than train its sweep at a default LR."""
    import os

    from eval.cache import try_lock
    monkeypatch.setattr(S.Runner, "_compute", _fake_compute)
    _fake_data(monkeypatch, lambda task: "test data")
    monkeypatch.setattr(S, "LOCK_POLL_S", 0.01)
    task = "lm-fortunes-d128-l2-r16"
    key = {**S.baseline_key(task + "-sp", "adamw", 500,
                            S._grid("adamw", S.SUITES["full"].grid_points), [0]),
           "version": S.SUITE_VERSION}
    fd = try_lock(S.Runner(tmp_path)._file(key).with_suffix(".lock"))   # "another process"
    released = []

    def log(line):      # the run says it waits: the other process finishes its group
        if line.startswith("waiting for") and not released:
            os.close(fd)
            released.append(line)
    doc = S.run_suite(["mulo-cpu"], "full", tmp_path, progress=False, log=log,
                      overrides={"axes": ("transformer-lowrank",), "lowrank": (task,)})
    assert released and "adamw on lm-fortunes-d128-l2-r16-sp" in released[0]
    riem = [json.loads(f.read_text())["key"] for f in (tmp_path / "cells").glob("*.json")]
    riem = [k for k in riem if k["opt"] == "riemannian"]
    adamw_lr = doc["cells"][0]["optimizers"]["adamw"]["lr"]
    assert riem and all(k.get("adam_lr") == adamw_lr for k in riem)
    assert doc["cells"][0]["optimizers"]["riemannian"]["adam_lr"] == adamw_lr


def test_a_row_not_run_states_its_measured_cost_on_the_widest_narrower_cell():
    from eval.report import markdown
    doc = _doc({"mlp-fmnist8-w1024-d3": {"muon": _curve(0.4)}, "mlp-fmnist8-w2048-d3": {"muon": _curve(0.4)},
                "mlp-fmnist8-w128-d15": {"muon": _curve(0.5)}, "mlp-fmnist8-w8192-d3": {"adamw": _curve(0.4)}})
    times = {"mlp-fmnist8-w1024-d3": 0.555, "mlp-fmnist8-w2048-d3": 4.2, "mlp-fmnist8-w128-d15": 0.01}
    for c in doc["cells"]:
        if c["task"] in times:
            c["optimizers"]["muon"]["wall_s_per_step"] = times[c["task"]]
    doc["not_run"] = [{"axis": "wider", "task": "mlp-fmnist8-w4096-d3", "steps": 100,
                       "optimizer": "muon"},
                      {"axis": "wider", "task": "mlp-fmnist8-w512-d3-sp", "steps": 100,
                       "optimizer": "muon"}]
    md = markdown(doc, [])
    # the widest narrower cell of the same family and axis: w2048, not w1024, not the d15 cell
    assert ("- wider `mlp-fmnist8-w4096-d3` (100 steps): muon (measured on `mlp-fmnist8-w2048-d3`, 2x "
            "narrower: 4200 ms per run-step)") in md
    # nothing narrower ran it: the line says only what is missing
    assert "- wider `mlp-fmnist8-w512-d3-sp` (100 steps): muon\n" in md


def test_the_untrained_row_of_an_lo_started_from_another_runs_theta_is_that_theta():
    # mulo-frac-cpu was meta-trained from mulo-cpu's theta (init_from), extended to its
    # fraction features: its "(untrained)" row runs that theta, not its seed's random init
    import jax

    import lopt
    (lo,) = S.load_los(["mulo-frac-cpu"])
    cfg = lo.meta["config"]
    assert cfg["init_from"] == "mulo-cpu"
    key = jax.random.split(jax.random.PRNGKey(int(cfg["seed"])), 3)[0]
    start, start_cfg, _ = lopt.load_theta("mulo-cpu")
    want = lopt.extend_theta(start, start_cfg, lo.config)
    got = S.untrained_theta(lo)
    assert S.lo_digest(got, lo.config) == S.lo_digest(want, lo.config)
    assert S.lo_digest(got, lo.config) != S.lo_digest(lopt.init_theta(key, lo.config),
                                                      lo.config)
    (plain,) = S.load_los(["mulo-cpu"])
    assert not plain.meta["config"].get("init_from")
    assert S.lo_digest(S.untrained_theta(plain), plain.config) == S.lo_digest(
        lopt.init_theta(jax.random.split(jax.random.PRNGKey(int(plain.meta["config"]["seed"])),
                                         3)[0], plain.config), plain.config)
    assert S.untrained_label("μLO") == "μLO (untrained)"
