"""The demo's terminal summary, from a results document."""

import json

import pytest

from eval import summary as S

# (axis, task, steps, μLO, tuned AdamW, AdamW 1e-3, SP LO); final train losses
CELLS = [("in-distribution", "mlp-fmnist8-w32-d3", 200, 0.30, 0.35, 0.40, 0.45),
         ("in-distribution", "mlp-fmnist8-w64-d3", 200, 0.28, 0.25, 0.38, 0.40),
         ("wider", "mlp-fmnist8-w256-d3", 200, 0.27, 0.30, 0.36, 0.90),
         ("wider", "mlp-fmnist8-w512-d3", 200, 0.26, 0.31, 0.37, 1.20),
         ("deeper", "mlp-fmnist8-w64-d15", 200, 203.7, 0.50, 0.60, 1.06),
         ("longer", "mlp-fmnist8-w64-d3", 1000, 0.20, 0.15, 0.22, 0.23)]


def _row(final, diverged=False):
    return {"final_mean": final, "final_std": 0.01, "final_train_loss": [final] * 3,
            "diverged": diverged, "mean_curve": [2.3, final], "test_loss": [final] * 3,
            "test_accuracy": [0.8] * 3}


def _doc(tmp_path, record_source=True):
    (tmp_path / "quick" / "tb").mkdir(parents=True)
    cells = []
    for axis, task, steps, mu, tuned, fixed, sp in CELLS:
        cell = {"axis": axis, "task": task, "steps": steps, "optimizers": {
            "adamw": _row(tuned), "muadam": _row(tuned * 1.1), "adamw@1e-3": _row(fixed),
            "μLO": _row(mu, diverged=mu > 100), "μLO (untrained)": _row(2.0),
            "SP LO": _row(sp)}}
        if record_source:
            cell["source"] = "fashion-mnist 8x8 (packaged)"
        cells.append(cell)
    meta = {"tasks": ["mlp-fmnist8-w32-d3", "mlp-fmnist8-w64-d3"],
            "es": {"min_horizon": 50, "max_horizon": 200}}
    return {"suite": "quick", "report_seeds": [1, 2, 3], "cells": cells, "los": [
        {"label": "μLO", "path": str(tmp_path / "quick"), "meta_step": 300,
         "config": {"mup": True}, "meta_config": meta},
        {"label": "SP LO", "path": str(tmp_path / "quick-sp"), "meta_step": 300,
         "config": {"mup": False}, "meta_config": meta}]}


def test_summary_says_what_was_trained_and_where_it_won_and_lost(tmp_path):
    run = tmp_path / "quick-eval"
    lines = S.summary(_doc(tmp_path), run)
    assert 5 <= len(lines) <= 10, lines
    text = "\n".join(lines)
    assert lines[0].startswith(f"Trained: μLO ({tmp_path / 'quick'}, 300 meta-steps on "
                               "fmnist8-w32-d3, fmnist8-w64-d3, horizons 50-200)")
    assert lines[1] == ("Final train loss on fashion-mnist 8x8 (packaged), mean of seeds 1,2,3 "
                        "(lower is better, † diverged): μLO vs tuned AdamW / AdamW 1e-3 / SP LO:")
    deeper = next(ln for ln in lines if ln.strip().startswith("deeper"))
    assert "203.700 †" in deeper and "lost / 0.600 lost / 1.060 lost" in deeper
    w32 = next(ln for ln in lines if "fmnist8-w32-d3 " in ln and "steps" in ln)
    assert w32.split("steps: ")[1] == "0.300 vs 0.350 won / 0.400 won / 0.450 won"
    assert ("μLO won 3/6 vs tuned AdamW (in-distribution fmnist8-w32-d3, wider fmnist8-w256-d3, "
            "wider fmnist8-w512-d3), 5/6 vs AdamW 1e-3, 5/6 vs SP LO.") in lines
    assert "untrained" not in text
    assert f"Report: {run / 'report.md'}" in lines[-1]
    assert f"{run / 'tb'} (eval), {tmp_path / 'quick' / 'tb'} (meta-training)" in lines[-1]
    assert f"tensorboard --logdir {tmp_path}`" in lines[-1]


def test_summary_names_the_cells_where_the_lo_spiked_mid_run_and_recovered(tmp_path):
    doc = _doc(tmp_path)
    longer = doc["cells"][-1]["optimizers"]["μLO"]
    longer["peak_train_loss"] = [2.3, 198.8, 2.3]        # one seed: 86x its initial loss
    longer["initial_train_loss"] = [2.3] * 3
    lines = S.summary(doc, tmp_path / "ev")
    row = next(ln for ln in lines if ln.strip().startswith("longer"))
    assert row.split("steps: ")[1].startswith("0.200 § vs 0.150 lost")
    assert ("μLO was unstable mid-run (§: a seed's loss rose above 1.5x its initial loss and "
            "came back) on longer fmnist8-w64-d3 (peak 86.4x).") in lines
    assert not any("unstable" in ln for ln in S.summary(_doc(tmp_path / "b"), tmp_path / "e"))


def test_summary_of_a_document_without_sources_asks_the_tasks(tmp_path):
    lines = S.summary(_doc(tmp_path, record_source=False), tmp_path / "e")
    assert lines[1].startswith("Final train loss on fashion-mnist 8x8 (packaged), mean")


def test_cli_prints_the_summary_or_one_error_line(tmp_path, capsys):
    run = tmp_path / "quick-eval"
    run.mkdir()
    assert S.main([str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {run / 'results.json'} not found")
    (run / "results.json").write_text(json.dumps(_doc(tmp_path)))
    assert S.main([str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 10 and out[0].startswith("Trained: μLO")


def test_summary_rejects_an_empty_document(tmp_path):
    with pytest.raises(S.SummaryError, match="no learned optimizer"):
        S.summary({"los": [], "cells": []}, tmp_path)


def test_the_report_and_the_summary_agree_on_a_win_over_a_diverged_adamw(tmp_path):
    # both tuned AdamW forms diverged (NaN final loss), the μLO did not: a win in the
    # report's table as in the summary (the report used to call it a loss)
    from eval import report as R
    doc = _doc(tmp_path)
    cell = doc["cells"][0]
    cell["optimizers"]["adamw"] = _row(float("nan"), diverged=True)
    cell["optimizers"]["adamw-cosine"] = _row(float("inf"), diverged=True)
    row = next(r for r in R.against_adamw(doc) if r["lo"] == "μLO")
    assert row["task"] == cell["task"] and row["win"] is True
    w32 = next(ln for ln in S.summary(doc, tmp_path / "ev") if "fmnist8-w32-d3 " in ln)
    assert w32.split("steps: ")[1].startswith("0.300 vs nan † won")
    # a diverged LO loses to any AdamW, diverged or not
    cell["optimizers"]["μLO"] = _row(float("nan"), diverged=True)
    row = next(r for r in R.against_adamw(doc) if r["lo"] == "μLO")
    assert row["win"] is False
