"""The selection/verdict split (DESIGN.md section 7): the `dev` suite, where LO variants are
chosen, and the `full` suite, which gives the verdict, share no task and no seed, and the
meta-training recipe of the compact μLO trains on neither."""

import json

import pytest

from eval import suite as S
from meta_train.config import PRESETS
from meta_train.tasks import TaskName
from needs_data import package_of

RECIPES = ("compact-cpu", "compact-mlp-cpu")


def _cells(suite: str, preset: str):
    cfg = json.loads(PRESETS[preset].to_json())
    return [c for c in S.cells_for(cfg, S.SUITES[suite]) if c.axis != "in-distribution"]


def _model(task: str) -> str:
    """A task without its steps: architecture, width, depth and data (the name)."""
    return str(TaskName.parse(task))


def _data(task: str) -> str:
    """The data a task trains on: fmnist8, fmnist28, digits8, stdlib, fortunes, ..."""
    return TaskName.parse(task).prefix.split("-")[1]


@pytest.mark.parametrize("preset", RECIPES)
def test_dev_and_full_share_no_task_and_no_seed(preset):
    dev, full = _cells("dev", preset), _cells("full", preset)
    assert dev and full
    shared = {_model(c.task) for c in dev} & {_model(c.task) for c in full}
    assert not shared, f"dev and full both run {sorted(shared)}"
    dev_spec, full_spec = S.SUITES["dev"], S.SUITES["full"]
    dev_seeds = {S.tuning_seed(dev_spec), *S.report_seeds(dev_spec)}
    full_seeds = {S.tuning_seed(full_spec), *S.report_seeds(full_spec)}
    assert dev_seeds == {100, 101, 102} and full_seeds == {0, 1, 2, 3}


@pytest.mark.parametrize("preset", RECIPES)
def test_meta_training_tasks_are_neither_dev_nor_full_cells(preset):
    cfg = PRESETS[preset]
    trained = {_model(t) for t in cfg.tasks} | {_model(cfg.validate_task)}
    for suite in ("dev", "full"):
        held = {_model(c.task) for c in _cells(suite, preset)}
        assert not trained & held, f"{preset} trains on {suite} cells {sorted(trained & held)}"


@pytest.mark.parametrize("preset", RECIPES)
def test_full_has_every_report_axis_and_a_text_no_recipe_or_dev_cell_uses(preset):
    full = _cells("full", preset)
    by_axis: dict[str, list[str]] = {}
    for c in full:
        by_axis.setdefault(c.axis, []).append(c.task)
    assert len(by_axis["wider"]) == 3 and len(by_axis["deeper"]) == 1
    assert [c.steps for c in full if c.axis == "longer"] == [12500]
    assert len(by_axis["transformer"]) + len(by_axis["transformer-lowrank"]) == 5
    assert len(by_axis["cnn"]) >= 2 and all(_data(t) == "fmnist28" for t in by_axis["cnn"])
    seen = {_data(t) for t in PRESETS[preset].tasks} | {_data(c.task) for c in
                                                         _cells("dev", preset)}
    unseen_lm = [t for t in by_axis["transformer"] if _data(t) not in seen]
    assert unseen_lm, f"every full LM cell uses text that {preset} or dev trains on"


def test_every_dev_cell_is_a_task_that_runs_on_packaged_data():
    # selection must not depend on optional Debian data: a dev suite that skips cells on
    # some machines would choose on different cells there
    for c in _cells("dev", "compact-cpu"):
        assert package_of(c.task) is None, f"dev cell {c.task} needs {package_of(c.task)}"
