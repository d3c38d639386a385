"""Joining suite runs computed apart (sessions, machines, processes) into one report."""

import copy
import json
from pathlib import Path

import pytest

from eval import merge as M

LM_REPORT = Path(__file__).resolve().parents[2] / "checkpoints" / "eval-full-lm"


@pytest.fixture(scope="module")
def whole():
    return json.loads((LM_REPORT / "results.json").read_text())


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
    doc = M.merge([a, b], ["runs/a", "runs/b"])
    assert [(c["axis"], c["task"]) for c in doc["cells"]] == \
        [(c["axis"], c["task"]) for c in whole["cells"]]
    for got, want in zip(doc["cells"], whole["cells"]):
        for name, o in want["optimizers"].items():
            assert got["optimizers"][name]["final_mean"] == o["final_mean"]
    assert [m["source"] for m in doc["merged_from"]] == ["runs/a", "runs/b"]
    assert doc["merged_from"][1]["cells"] == [f"{c['task']} ({c['steps']} steps)"
                                               for c in whole["cells"][1:]]
    # a merge of a merge keeps the runs the cells were computed by
    again = M.merge([doc, b], ["merged", "runs/b"])
    assert [m["source"] for m in again["merged_from"]] == ["runs/a", "runs/b", "runs/b"]


def test_a_cell_both_runs_hold_comes_from_the_later_one(whole):
    a, b = _split(whole)
    b["cells"].insert(0, copy.deepcopy(a["cells"][0]))
    b["cells"][0]["optimizers"]["adamw"]["final_mean"] = 9.0
    doc = M.merge([a, b])
    assert len(doc["cells"]) == len(whole["cells"])
    assert doc["cells"][0]["optimizers"]["adamw"]["final_mean"] == 9.0


@pytest.mark.parametrize("change, words", [
    (lambda d: d["los"][0].update(digest="0" * 12), "same learned optimizers"),
    (lambda d: d.update(report_seeds=[1, 2]), "--seeds"),
    (lambda d: d["spec"].update(grid_points=3), "grid_points"),
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
    # a setting that came after the earlier run's version (absent there) is no difference
    b["spec"]["a_later_setting"] = 3
    doc = M.merge([a, b])
    assert doc["spec"]["transformer"] == ["lm-fortunes-d64-l2", "lm-fortunes-d64-l6"]
    assert doc["spec"]["a_later_setting"] == 3


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
