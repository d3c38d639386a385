"""Joining suite runs computed apart (sessions, machines, processes) into one report."""

import copy
import json
from pathlib import Path

import pytest

from eval import merge as M

LM_REPORT = Path(__file__).resolve().parents[2] / "checkpoints" / "eval-full-lm"


@pytest.fixture(scope="module")
def whole():
    """The shipped LM report's complete cells (those with every row, AdamW included)."""
    doc = json.loads((LM_REPORT / "results.json").read_text())
    doc["cells"] = [c for c in doc["cells"] if "adamw" in c["optimizers"]
                    and all("speedup_vs_adamw" in o for o in c["optimizers"].values())]
    doc.pop("not_run", None)
    doc.pop("merged_from", None)
    for c in doc["cells"]:
        for o in c["optimizers"].values():
            o.pop("run", None)
    assert len(doc["cells"]) >= 3
    return doc


def _split(whole):
    """The shipped LM report as two runs: its first cell, and the rest."""
    a, b = copy.deepcopy(whole), copy.deepcopy(whole)
    a["cells"], b["cells"] = whole["cells"][:1], whole["cells"][1:]
    a["command"], b["command"] = "python -m eval --out runs/a", "python -m eval --out runs/b"
    a["commit"], b["commit"] = "aaaaaaa", "bbbbbbb"
    a.pop("merged_from", None)
    b.pop("merged_from", None)
    return a, b


def test_merging_two_runs_gives_back_every_cell_with_its_numbers_and_sources(whole):
    a, b = _split(whole)
    doc = M.merge([b, a], ["runs/b", "runs/a"])     # listed out of order: the suite's order
    assert [(c["axis"], c["task"]) for c in doc["cells"]] == \
        [(c["axis"], c["task"]) for c in whole["cells"]]
    for got, want in zip(doc["cells"], whole["cells"]):
        for name, o in want["optimizers"].items():
            assert got["optimizers"][name]["final_mean"] == o["final_mean"]
            assert got["optimizers"][name]["speedup_vs_adamw"] == o["speedup_vs_adamw"]
    by_source = {m["source"]: m for m in doc["merged_from"]}
    assert by_source["runs/a"]["cells"] == [f"{whole['cells'][0]['task']} (500 steps)"]
    assert by_source["runs/b"]["cells"] == [f"{c['task']} ({c['steps']} steps)"
                                            for c in whole["cells"][1:]]
    # a merge of a merge keeps the runs the rows were computed by
    again = M.merge([doc, b], ["merged", "runs/b2"])
    assert {m["source"] for m in again["merged_from"]} == {"runs/a", "runs/b2"}


def test_one_run_alone_is_re_rendered_with_the_commit_and_command_that_computed_it(
        whole, tmp_path):
    # e.g. a committed report written before the report marked mid-run spikes (§)
    a, _ = _split(whole)
    a["cells"] = copy.deepcopy(whole["cells"])
    doc = M.merge([a], ["checkpoints/eval-x"])
    for got, want in zip(doc["cells"], whole["cells"]):
        assert {n: o["final_mean"] for n, o in got["optimizers"].items()} == \
            {n: o["final_mean"] for n, o in want["optimizers"].items()}
    (run,) = doc["merged_from"]
    assert (run["source"], run["commit"], run["command"]) == \
        ("checkpoints/eval-x", "aaaaaaa", "python -m eval --out runs/a")
    with pytest.raises(M.MergeError, match="at least one run"):
        M.merge([], [])


def test_rows_merge_one_by_one_and_the_later_run_wins_a_row(whole):
    """A cell run in two parts (e.g. the SP baselines in one session, the μP ones in the
    next) keeps every row; a row both hold comes from the later run; speedups are taken
    against the merged cell's AdamW."""
    a, b = _split(whole)
    cell = copy.deepcopy(a["cells"][0])
    names = list(cell["optimizers"])
    early = {**cell, "optimizers": {n: cell["optimizers"][n] for n in names[:3]}}
    late = copy.deepcopy({**cell, "optimizers": {n: cell["optimizers"][n] for n in names[2:]}})
    late["optimizers"][names[2]]["final_mean"] = 9.0
    for o in late["optimizers"].values():
        o["speedup_vs_adamw"] = -1.0        # against no AdamW: recomputed after the merge
    a["cells"], b["cells"] = [early], [late]
    b["not_run"] = [{"axis": cell["axis"], "task": cell["task"], "steps": cell["steps"],
                     "optimizer": names[0], "group": "x"}]
    doc = M.merge([a, b], ["runs/early", "runs/late"])
    (got,) = doc["cells"]
    assert list(got["optimizers"]) == names
    assert got["optimizers"][names[2]]["final_mean"] == 9.0
    for n in names:
        if n != names[2]:
            assert got["optimizers"][n]["final_mean"] == cell["optimizers"][n]["final_mean"]
            assert got["optimizers"][n]["speedup_vs_adamw"] == pytest.approx(
                cell["optimizers"][n]["speedup_vs_adamw"], rel=1e-3)
    assert doc["not_run"] == []                         # the early run has that row
    early_src = next(m for m in doc["merged_from"] if m["source"] == "runs/early")
    assert early_src["cells"] == [f"{cell['task']} ({cell['steps']} steps): "
                                  + ", ".join(names[:2])]


@pytest.mark.parametrize("change, words", [
    (lambda d: d["los"][0].update(digest="0" * 12), "same learned optimizers"),
    (lambda d: d.update(report_seeds=[1, 2]), "--seeds"),
    (lambda d: d["spec"].update(grid_points=3), "grid_points"),
    # a run that predates a setting ran with it off: edges not widened is a difference
    (lambda d: d["spec"].pop("extend_edges"), "extend_edges"),
    (lambda d: d.update(suite="quick"), "one suite"),
])
def test_runs_whose_numbers_mean_different_things_are_refused(whole, change, words):
    a, b = _split(whole)
    change(b)
    with pytest.raises(M.MergeError, match=words):
        M.merge([a, b], ["runs/a", "runs/b"])


def test_runs_that_differ_only_in_which_cells_ran_merge(whole):
    a, b = _split(whole)
    a["spec"]["transformer"] = ["lm-fortunes-d64-l2"]
    b["spec"]["transformer"] = ["lm-fortunes-d64-l6"]
    b["spec"]["transformer"] = ["lm-fortunes-d64-l6", "lm-fortunes-d256-l2"]
    # the μTransfer limits may differ: each row records where its LR came from
    a["spec"].pop("lm_mutransfer_above_d", None)
    b["spec"]["lm_mutransfer_above_d"] = 256
    doc = M.merge([a, b])
    assert doc["spec"]["transformer"] == ["lm-fortunes-d64-l2", "lm-fortunes-d256-l2",
                                          "lm-fortunes-d64-l6"]    # the full suite's order


def test_the_cli_writes_one_report_naming_both_runs(whole, tmp_path, capsys):
    a, b = _split(whole)
    for name, d in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(d))
    out = tmp_path / "merged"
    assert M.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    for c in whole["cells"]:
        assert f"| {c['task']} | {c['steps']} |" in md
    assert "merged from" in md and "runs/a" in md and "runs/b" in md
    assert json.loads((out / "results.json").read_text())["command"].startswith(
        "python -m eval.merge")
    # a missing run is one clear error line, and nothing is written
    assert M.main([str(tmp_path / "a"), str(tmp_path / "nope"), "--out",
                   str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0]
    assert not (tmp_path / "x").exists()


def test_the_header_names_the_baselines_the_cells_tuned_not_the_runs_mlp_list(whole):
    """Transformer cells run their own baselines (Schatten-p, Riemannian low-rank); the run's
    `baselines` option is the MLP suite's list, which no row of an LM report holds."""
    from eval import report as R
    doc = copy.deepcopy(whole)
    doc["baselines"] = ["adamw", "muadam", "muon", "modular", "prodigy"]
    line = next(s for s in R.markdown(doc, []).splitlines() if s.startswith("- baselines ("))
    named = line[len("- baselines ("):line.index(")")].split(", ")
    tuned = {n for c in whole["cells"] for n, o in c["optimizers"].items() if o.get("grid")}
    assert set(named) == tuned and "schatten" in named
    assert "modular" not in named and "prodigy" not in named


def test_a_cell_whose_rows_were_computed_on_different_data_is_refused_in_one_line(whole):
    a, b = _split(whole)
    cell = a["cells"][0]
    names = list(cell["optimizers"])
    other = copy.deepcopy({**cell, "optimizers": {n: cell["optimizers"][n] for n in names[1:2]}})
    other["source"] = "python-stdlib"
    b["cells"] = [other]
    with pytest.raises(M.MergeError, match=r"^cell lm-\S+ \(500 steps\): rows computed on "
                                           r"different data \(runs/a on .* and runs/b on "
                                           r"'python-stdlib'\)"):
        M.merge([a, b], ["runs/a", "runs/b"])
    # the same source, another data digest (the corpus changed under its name)
    other["source"] = cell["source"]
    for o in cell["optimizers"].values():
        o["data_digest"] = "aaaa"
    other["optimizers"][names[1]]["data_digest"] = "bbbb"
    b["cells"] = [copy.deepcopy(other)]
    with pytest.raises(M.MergeError, match=r"data digests \['aaaa', 'bbbb'\]"):
        M.merge([a, b], ["runs/a", "runs/b"])
    # a later run that replaces every row of the cell is not a mixture
    b["cells"] = [copy.deepcopy({**cell, "source": "python-stdlib"})]
    for o in b["cells"][0]["optimizers"].values():
        o["data_digest"] = "bbbb"
    assert M.merge([a, b], ["runs/a", "runs/b"])["cells"][0]["source"] == "python-stdlib"


def test_merged_speedups_come_from_full_precision_curves_or_are_kept(whole):
    """A row from the AdamW row's run keeps its suite-computed speedup; a row from another run
    is recomputed from the stored mean curve, which results.json now keeps at full precision:
    two curves equal to 6 digits but not below are told apart."""
    import numpy as np

    from eval.report import _rounded_curves
    a, b = _split(whole)
    cell = a["cells"][0]
    names = [n for n in cell["optimizers"] if n not in ("adamw", "adamw-cosine")]
    ref = np.linspace(2.0, 1.0, 100)
    ref[50:] = 1.0                          # AdamW reaches its minimum 1.0 at step 51
    cand = ref.copy()
    cand[10:] = np.maximum(ref[10:], 1.0 + 4e-7)    # 1.0000004: never reaches 1.0
    cell["optimizers"]["adamw"]["mean_curve"] = ref.tolist()
    stored = cell["optimizers"][names[0]]["speedup_vs_adamw"]
    moved = copy.deepcopy({**cell, "optimizers": {names[1]: cell["optimizers"][names[1]]}})
    moved["optimizers"][names[1]]["mean_curve"] = cand.tolist()
    b["cells"] = [moved]
    a, b = _rounded_curves(a), _rounded_curves(b)       # as results.json stores them
    got = M.merge([a, b], ["runs/a", "runs/b"])["cells"][0]["optimizers"]
    assert got[names[0]]["speedup_vs_adamw"] == stored          # same run as AdamW: kept
    assert got[names[1]]["speedup_vs_adamw"] == 0.0             # 6 digits would say 1.0
    assert "speedup_from_rounded_curves" not in got[names[1]]
    # documents written before full-precision curves: recomputed, and marked
    for d in (a, b):
        d.pop("full_mean_curves")
    got = M.merge([a, b], ["runs/a", "runs/b"])["cells"][0]["optimizers"]
    assert got[names[1]]["speedup_from_rounded_curves"] is True


def test_merging_into_a_meta_training_run_is_one_line_and_leaves_its_tb(whole, tmp_path,
                                                                        capsys):
    a, b = _split(whole)
    for name, d in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(d))
    run = tmp_path / "run"
    (run / "tb").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "metrics.jsonl").write_text("")
    (run / "tb" / "events.1").write_bytes(b"curves")
    assert M.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a meta-training run (config.json, metrics.jsonl)" in err[0]
    assert (run / "tb" / "events.1").read_bytes() == b"curves"
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.jsonl", "tb"]


def test_a_union_joins_runs_of_other_learned_optimizers_and_settings_and_says_which(whole):
    """--union: one page of every cell from runs that evaluated different LOs or ran with
    other settings; each run names the settings in which it departs from the first, a label
    naming two thetas is refused, and other report seeds are still refused."""
    from eval.report import markdown
    a, b = _split(whole)
    b["spec"]["grid_points"] = 3
    b["los"] = b["los"][:1] + [{**b["los"][0], "label": "μVeLO", "digest": "f" * 16}]
    with pytest.raises(M.MergeError, match="same learned optimizers"):
        M.merge([a, b])
    doc = M.merge([a, b], ["runs/a", "runs/b"], union=True)
    assert [lo["label"] for lo in doc["los"]] == [lo["label"] for lo in a["los"]] + ["μVeLO"]
    by_source = {m["source"]: m for m in doc["merged_from"]}
    assert by_source["runs/b"]["settings"] == {"grid_points": 3}
    assert by_source["runs/a"]["settings"] == {}
    md = markdown(dict(doc, commit="c", command="c"), [])
    assert "grid_points = 3 (unlike the first run)" in md
    b["los"][1]["label"] = a["los"][0]["label"]            # one label, two thetas
    with pytest.raises(M.MergeError, match="label different learned optimizers"):
        M.merge([a, b], ["runs/a", "runs/b"], union=True)
    b["los"][1]["label"] = "μVeLO"
    b["report_seeds"] = [1, 2]
    with pytest.raises(M.MergeError, match="--seeds"):
        M.merge([a, b], ["runs/a", "runs/b"], union=True)
