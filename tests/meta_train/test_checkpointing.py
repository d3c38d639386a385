"""Checkpoint layout: the state stored by field names with plain lopt.json/config.json per
step, and runs written in the older layout (state by flat leaf index, orbax JSON items)
still restore and load (tests/fixtures/run-v1: a 2-step smoke run in that layout)."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np

import lopt
from meta_train.checkpointing import Checkpointer
from meta_train.config import MetaTrainConfig, fill_config
from lopt.io.checkpoint import to_json as lopt_to_json
from meta_train.loop import MetaTrainer

OLD_RUN = Path(__file__).parent.parent / "fixtures" / "run-v1"


def _config(run: Path) -> MetaTrainConfig:
    return MetaTrainConfig.from_dict(json.loads((run / "config.json").read_text()))


def test_a_run_in_the_old_layout_restores_and_loads(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    step = run / "checkpoints" / "2"
    assert (step / "lopt" / "metadata").is_file() and not (step / "lopt.json").exists()
    cfg = _config(run)
    theta, config, meta = lopt.load_theta(run)
    assert meta["step"] == 2 and config.to_dict() == cfg.lo.to_dict()
    ck = Checkpointer(run / "checkpoints")
    assert fill_config(ck.saved_config()) == cfg.to_dict()      # a first-release config
    like = MetaTrainer(cfg).init_state()
    state = ck.restore(like)
    assert int(state["step"]) == 2
    assert jax.tree.structure(state) == jax.tree.structure(like)
    assert jax.tree.all(jax.tree.map(np.array_equal, state["theta"], theta))
    # a run continued from it writes the new layout next to the old one; both load
    ck.save(4, state, lopt_to_json(state["theta"], cfg.lo, {"step": 4}), cfg.to_dict())
    ck.close()
    assert (run / "checkpoints" / "4" / "lopt.json").is_file()
    assert lopt.load_theta(run)[2]["step"] == 4
    assert lopt.load_theta(step)[2]["step"] == 2


def test_new_checkpoints_describe_themselves(tmp_path):
    cfg = _config(OLD_RUN)
    state = MetaTrainer(cfg).init_state()
    ck = Checkpointer(tmp_path / "checkpoints")
    ck.save(1, state, lopt_to_json(state["theta"], cfg.lo, {"step": 1}), cfg.to_dict())
    step = tmp_path / "checkpoints" / "1"
    assert json.loads((step / "config.json").read_text()) == cfg.to_dict()
    assert lopt.load_theta(step / "lopt.json")[2]["step"] == 1
    # the orbax tree is keyed by the state's own field names, not by leaf index
    tree = ck.mngr.item_metadata(1)["state"]
    assert "theta" in tree and set(tree["theta"]["nn"]) == set(state["theta"]["nn"])
    back = ck.restore(state)
    ck.close()
    assert jax.tree.all(jax.tree.map(np.array_equal, back, state))
