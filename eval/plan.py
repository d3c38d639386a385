"""The suite as a plan: the groups of runs a suite computes, in order, and the results each
one reads.

:func:`plan_groups` is a pure function of the cells (no training, no cache), so the progress
total, the printed μTransfer notes and the tests read the same list that
:func:`eval.suite.run_suite` executes. A step is one cached group (a tuning step may add a
few single-LR groups at a grid edge, :func:`eval.suite.extend_at_edges`). Dependencies:

- a baseline's ``report`` step (its report seeds at the tuned LR) reads its ``tune`` step;
- a μP baseline's ``tune`` step on a cell wider than its axis's μTransfer limit reads the
  ``tune`` step of the same baseline on the widest cell of the task family at or below the
  limit (planned before it), and searches three LRs around that one (Tensor Programs V);
- a baseline that runs AdamW on part of its leaves (``adam_lr_from``) reads the cell's AdamW
  ``tune`` step, planned before it.

Within a cell the learned optimizers come first (an interrupted cell keeps them), then AdamW
at its untuned default LR, then the baselines, matrix-function ones last.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from lopt.baselines import BASELINES
from meta_train.tasks import TaskName

KINDS = ("lo", "untrained", "fixed-adamw", "tune", "report")


@dataclasses.dataclass(frozen=True)
class Step:
    """One group of runs. ``kind``: "lo" (an LO on the report seeds), "untrained" (the theta
    its meta-training started from), "fixed-adamw" (AdamW at 1e-3), "tune" (a baseline's LR
    sweep on the tuning seed), "report" (the baseline's report seeds at the tuned LR)."""
    kind: str
    cell: int                       # index into the planned cells
    name: str                       # the LO's label or the baseline's name
    needs: tuple[int, ...] = ()     # earlier steps whose results this one reads
    transfer: int | None = None     # tune: the tune step whose LR it μTransfers
    adam_lr: int | None = None      # tune, report: the tune step giving its AdamW LR


def plan_groups(cells: Sequence, lo_labels: Sequence[str],
                baselines_of: Callable[[object], Sequence[str]], *, fixed_adamw: bool,
                untrained: Callable[[object], bool], limit_of: Callable[[object], int]
                ) -> list[Step]:
    """The suite's steps for ``cells`` (objects with ``.task``).

    ``baselines_of(cell)``: the baselines tuned in a cell; ``untrained(cell)``: whether each
    LO also runs at its untrained theta there; ``limit_of(cell)``: the widest a cell may be
    and still tune a μP baseline on its full grid (0: no μTransfer on its axis)."""
    steps: list[Step] = []
    tuned: dict[tuple[str, str], tuple[int, int]] = {}  # (family, baseline) -> (width, step)
    for ci, cell in enumerate(cells):
        for label in lo_labels:
            steps.append(Step("lo", ci, label))
            if untrained(cell):
                steps.append(Step("untrained", ci, label))
        if fixed_adamw:
            steps.append(Step("fixed-adamw", ci, "adamw"))
        name = TaskName.parse(cell.task)
        width, limit, here = name.width, limit_of(cell), {}
        for b in sorted(baselines_of(cell), key=lambda n: (BASELINES[n].matrix_functions,
                                                           bool(BASELINES[n].adam_lr_from))):
            key = (name.family, b)
            transfer = None
            if (limit and width and width > limit and key in tuned
                    and BASELINES[b].parametrization == "mup"):
                transfer = tuned[key][1]
            adam = here.get(BASELINES[b].adam_lr_from)
            here[b] = len(steps)
            steps.append(Step("tune", ci, b, _needs(transfer, adam), transfer, adam))
            if limit and width and width <= limit and width > tuned.get(key, (0, 0))[0]:
                tuned[key] = (width, here[b])
            steps.append(Step("report", ci, b, _needs(here[b], adam), adam_lr=adam))
    return steps


def _needs(*steps: int | None) -> tuple[int, ...]:
    return tuple(s for s in steps if s is not None)
