"""The suite's group plan (eval.plan): which groups run, in which order, and which results
each reads; no training."""

import dataclasses

import numpy as np

from eval import suite as S
from eval.plan import plan_groups

_META = {"tasks": ["mlp-fmnist8-w32-d3", "mlp-fmnist8-w128-d3"], "es": {"max_horizon": 500}}


def _plan(spec, los=("μLO",), meta=_META):
    cells = S.cells_for(meta, spec)
    widest = S.base_width(meta, spec)
    steps = plan_groups(
        cells, list(los), lambda c: spec.baselines if c.baselines is None else c.baselines,
        fixed_adamw=spec.fixed_adamw,
        untrained=lambda c: spec.untrained_everywhere or c.axis == "in-distribution",
        limit_of=lambda c: S.transfer_limit(c, spec, widest))
    return cells, steps


def _step(cells, steps, kind, task, name):
    [i] = [i for i, s in enumerate(steps)
           if s.kind == kind and cells[s.cell].task == task and s.name == name]
    return i


def test_full_suite_mu_p_baselines_transfer_from_the_widest_cell_at_or_below_the_limit():
    spec = dataclasses.replace(S.SUITES["full"], lowrank_baselines=("adamw", "riemannian"))
    cells, steps = _plan(spec)

    def tune(task, name):
        return steps[_step(cells, steps, "tune", task, name)]
    w1024 = _step(cells, steps, "tune", "mlp-fmnist8-w1024-d3", "muadam")
    assert tune("mlp-fmnist8-w1024-d3", "muadam").transfer is None      # 8x: full grid
    for wide in ("mlp-fmnist8-w2048-d3", "mlp-fmnist8-w4096-d3"):       # 16x, 32x
        assert tune(wide, "muadam").transfer == w1024
        assert tune(wide, "muadam").needs == (w1024,)
        assert tune(wide, "adamw").transfer is None                       # SP: full grid
    assert tune("mlp-fmnist8-w4096-d3", "muon").transfer == _step(
        cells, steps, "tune", "mlp-fmnist8-w1024-d3", "muon")
    # other axes and families never transfer
    assert tune("mlp-fmnist8-w128-d15", "muadam").transfer is None
    assert tune("mlp-fmnist28-w1024-d3", "muadam").transfer is None
    # transformers: d512-l2 from d256-l2; the deeper d64-l6 family has its own LRs
    assert tune("lm-fortunes-d512-l2", "muon").transfer == _step(
        cells, steps, "tune", "lm-fortunes-d256-l2", "muon")
    assert tune("lm-fortunes-d256-l2", "muon").transfer is None
    assert tune("lm-fortunes-d64-l6", "muon").transfer is None
    # Riemannian low-rank takes the cell's tuned AdamW LR, planned before it
    adamw = _step(cells, steps, "tune", "lm-fortunes-d128-l2-r16", "adamw")
    assert tune("lm-fortunes-d128-l2-r16", "riemannian").adam_lr == adamw
    rep = _step(cells, steps, "report", "lm-fortunes-d128-l2-r16", "riemannian")
    assert steps[rep].needs == (rep - 1, adamw) and steps[rep].adam_lr == adamw


def test_every_step_needs_only_earlier_steps_and_each_row_has_one_step():
    spec = S.SUITES["full"]
    cells, steps = _plan(spec, los=("μLO", "SP LO"))
    for i, s in enumerate(steps):
        assert all(j < i for j in s.needs)
        if s.kind == "report":
            assert steps[s.needs[0]].kind == "tune" and steps[s.needs[0]].name == s.name
            assert steps[s.needs[0]].cell == s.cell
    for ci, cell in enumerate(cells):
        mine = [s for s in steps if s.cell == ci]
        names = spec.baselines if cell.baselines is None else cell.baselines
        # the LOs first (with their untrained starts in-distribution), then AdamW at 1e-3,
        # then tune+report per baseline
        lo = 2 * (1 + (cell.axis == "in-distribution"))
        assert [s.kind for s in mine[lo - 1:lo + 1]] == [
            "untrained" if lo == 4 else "lo", "fixed-adamw"]
        assert len(mine) == lo + 1 + 2 * len(names)
        assert sorted(s.name for s in mine if s.kind == "report") == sorted(names)
    # matrix-function baselines come last within a cell
    first = [s.name for s in steps if s.cell == 0 and s.kind == "tune"]
    assert first.index("muon") > first.index("muadam") and first.index("modular") > 1


def test_untrained_rows_follow_the_suite_and_quick_transfers_nothing():
    dev = S.SUITES["dev"]
    cells, steps = _plan(dev)
    assert all(sum(s.kind == "untrained" and s.cell == ci for s in steps) == 1
               for ci in range(len(cells)))
    assert not any(s.kind == "fixed-adamw" for s in steps)
    quick = dataclasses.replace(S.SUITES["quick"], wider=(4, 8, 16))
    cells, steps = _plan(quick)
    assert {cells[s.cell].axis for s in steps if s.kind == "untrained"} == {"in-distribution"}
    assert all(s.transfer is None for s in steps)


def test_transfer_grid_is_three_points_on_the_baselines_spacing():
    grid = S.transfer_grid("muadam", 0.0959)
    assert len(grid) == 3 and grid[1] == 0.0959
    np.testing.assert_allclose([grid[0] * 10 ** 0.5, grid[2] / 10 ** 0.5], 0.0959, rtol=0.02)
