"""The eval suite end to end on a freshly meta-trained smoke checkpoint."""

import dataclasses
import json

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


def test_tuning_uses_only_the_tuning_seed_and_picks_the_best(smoke_eval):
    root, doc, _ = smoke_eval
    seen = [json.loads(f.read_text()) for f in (root / "ev" / "cells").glob("*.json")]
    for c in doc["cells"]:
        o = c["optimizers"]["adamw"]
        tune = [s for s in seen if s["key"]["task"] == o["task"] and s["key"]["opt"] == "adamw"
                and len(s["key"]["lrs"]) > 1]
        assert len(tune) == 1 and tune[0]["key"]["seeds"] == [0]
        finals = [S._final(np.asarray(l[0])) for l in tune[0]["losses"]]
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
    spec = S.SUITES["full"]
    cells = S.cells_for(_META, spec)
    assert [(c.axis, c.task, c.steps) for c in cells] == [
        ("in-distribution", "mlp-fmnist8-w32-d3", 500),
        ("in-distribution", "mlp-fmnist8-w128-d3", 500),
        ("wider", "mlp-fmnist8-w1024-d3", 500), ("wider", "mlp-fmnist8-w2048-d3", 500),
        ("wider", "mlp-fmnist8-w4096-d3", 500),
        ("deeper", "mlp-fmnist8-w128-d15", 500),
        ("longer", "mlp-fmnist8-w128-d3", 12500)]
    only = S.cells_for(_META, dataclasses.replace(spec, axes=("wider", "longer"), wider=(8,)))
    assert [(c.axis, c.task, c.steps) for c in only] == [
        ("wider", "mlp-fmnist8-w1024-d3", 500), ("longer", "mlp-fmnist8-w128-d3", 12500)]


def test_unknown_axis_is_one_clear_error(capsys):
    from eval.cli import main
    with pytest.raises(SystemExit) as e:
        main(["--lo", "mulo-cpu", "--axes", "wider,taller"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unknown axis 'taller'" in err and "in-distribution, wider, deeper, longer" in err


def test_an_axis_subset_fills_the_cache_of_the_whole_suite(smoke_eval, monkeypatch):
    root, doc, _ = smoke_eval
    sub = S.run_suite([str(root / "run"), str(root / "run-sp")], "smoke", root / "ev-axes",
                      progress=False, overrides={"axes": ("wider",)})
    assert [c["axis"] for c in sub["cells"]] == ["wider"]
    # the subset computes the same numbers as the whole suite's wider cell ...
    whole = [c for c in doc["cells"] if c["axis"] == "wider"][0]["optimizers"]
    for name, row in sub["cells"][0]["optimizers"].items():
        assert row["final_mean"] == pytest.approx(whole[name]["final_mean"], rel=1e-5), name
    # ... and LOs are listed after the baselines even though they ran first
    names = list(sub["cells"][0]["optimizers"])
    assert names.index("adamw@1e-3") < names.index("μLO") < names.index("SP LO")
    # a later run of all axes in the same directory only computes the missing cells
    calls = []
    real = S.Runner._compute
    def counting(self, task_name, *a, **k):
        calls.append(task_name)
        return real(self, task_name, *a, **k)
    monkeypatch.setattr(S.Runner, "_compute", counting)
    S.run_suite([str(root / "run"), str(root / "run-sp")], "smoke", root / "ev-axes",
                progress=False)
    in_dist = {c["task"] for c in doc["cells"] if c["axis"] == "in-distribution"}
    assert {S.variant(t, "mup") for t in calls} == in_dist


def test_report_names_where_a_run_departs_from_its_suite():
    from eval.report import _overrides
    spec = dataclasses.asdict(dataclasses.replace(S.SUITES["full"], wider=(8,), seeds=2))
    doc = {"suite": "full", "spec": json.loads(json.dumps(spec)), "baselines": ["adamw"]}
    assert _overrides(doc) == ["- departs from the `full` suite: wider = 8 (suite default "
                               "8, 16, 32); seeds = 2 (suite default 3); baselines = adamw "
                               "(suite default adamw, muadam, muon, modular, prodigy)"]
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
