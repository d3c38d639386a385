"""Model cards: ``python -m eval.card`` packages a run with its eval summaries."""

import dataclasses
import json

import jax
import numpy as np
import pytest

import lopt
from eval.card import main as card_main
from meta_train.config import PRESETS
from meta_train.loop import run


def _eval_doc(command, suite, mean_lo, mean_adamw):
    def row(m, s, diverged=False):
        return {"final_mean": m, "final_std": s, "diverged": diverged}
    return {"command": command, "commit": "abc1234", "suite": suite, "report_seeds": [1, 2, 3],
            "cells": [{"axis": "wider", "task": "mlp-fmnist8-w1024-d3", "steps": 500,
                       "optimizers": {"adamw": row(mean_adamw, 0.01),
                                      "adamw@1e-3": row(9.0, 0.0),
                                      "μLO": row(mean_lo, 0.002),
                                      "μLO (untrained)": row(2.3, 0.0),
                                      "SP LO": row(7.5, 1.0, True)}}]}


@pytest.mark.slow
def test_card_summarizes_every_eval_it_is_given(tmp_path):
    cfg = dataclasses.replace(PRESETS["smoke"], outer_steps=2, validate_every=0)
    run(cfg, tmp_path / "run", progress=False)
    for name, doc in (("ev-a", _eval_doc("python -m eval --suite quick", "quick", 0.41, 0.40)),
                      ("ev-b", _eval_doc("python -m eval --suite full", "full", 0.38, 0.39))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(doc))
    rc = card_main(["--run", str(tmp_path / "run"), "--name", "tiny", "--dest",
                    str(tmp_path / "ckpt"), "--eval", str(tmp_path / "ev-a"), "--eval",
                    str(tmp_path / "ev-b"), "--command", "python -m meta_train --preset smoke"])
    assert rc == 0
    card = (tmp_path / "ckpt" / "tiny" / "MODEL_CARD.md").read_text()
    assert "`python -m meta_train --preset smoke`" in card
    assert "From `python -m eval --suite quick`" in card and "From `python -m eval --suite full`" in card
    lines = [l for l in card.splitlines() if l.startswith("| wider |")]
    # one row per eval; the untrained LO and the untuned AdamW are left out; best in bold;
    # a diverged run is marked
    assert lines == [
        "| wider | mlp-fmnist8-w1024-d3 | 500 | **0.400 ± 0.010** | 0.410 ± 0.002 | 7.500 ± 1.000 † |",
        "| wider | mlp-fmnist8-w1024-d3 | 500 | 0.390 ± 0.010 | **0.380 ± 0.002** | 7.500 ± 1.000 † |"]
    assert (tmp_path / "ckpt" / "tiny" / "meta_loss.png").stat().st_size > 1000
    theta, config, _ = lopt.load_theta(str(tmp_path / "ckpt" / "tiny"))
    theta_run, _, _ = lopt.load_theta(str(tmp_path / "run"))
    for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(theta_run)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
