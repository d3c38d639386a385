"""The generalization suite: train held-out tasks with a learned optimizer next to tuned
baselines, and collect final/best loss, test accuracy, loss curves, steps-to-target
speedups and step times.

Suites are defined relative to the LO's meta-training config (read from its checkpoint):
in-distribution (the meta-training tasks at the meta-training horizon), wider (multiples of
the widest meta-training width), deeper (~5x depth) and longer (a multiple of the longest
meta-training horizon). The ``full`` suite adds cells that do not depend on the LO:
char-level transformer LMs (base d_model, 4x and 8x wider, 3x deeper; no LO here has seen a
transformer), a factored-attention LM where Riemannian low-rank descent meets AdamW on the
same factors, and 28x28 Fashion-MNIST (other data: another input distribution and fan-in).
Cells on those axes whose data is not on the machine are skipped and the report says so.
The ``dev`` suite holds only held-out cells and the two AdamW forms
(constant and warmup-cosine), for choosing between learned-optimizer variants; ``full`` gives
the verdict.

Protocol: each baseline's LR is tuned on a log grid on the tuning seed (``seed_base``: 0,
100 in ``dev``) only; every optimizer is then reported on the next n seeds. The LO gets no tuning. With ``schedule="cosine"``
every baseline runs with linear warmup and cosine decay (``lopt.baselines.warmup_cosine``)
and is tuned over its peak LR the same way. One compile per
(task, optimizer): LR grids and seeds are ``vmap``-ed. Results are cached per group in
``<out>/cells`` so an interrupted suite resumes and a re-run computes only what is missing; a
group's cache key holds everything its results depend on: the task's data source
(``Task.source``) and digests of its data arrays and initial parameters, and a digest of the
optimizer's code with its defaults (:mod:`eval.keys`), so a cache made on other data or by
other code is never reused. A cached group is used only if its stored key is the requested
one. Every cell records its data source in the results, and every group the jax version and
thread count it ran with.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import lopt
from eval import keys
from eval.labels import untrained_label  # noqa: F401 (re-exported)
from eval.plan import Step, plan_groups
from eval.cache import (COMPATIBLE_VERSIONS, SUITE_VERSION, Busy, GroupCache,  # noqa: F401
                        NotCached, is_held)
from lopt.baselines import BASELINES, SCHEDULES
from meta_train.inner import train
from meta_train.progress import progress_bar
from meta_train.tasks import TaskName, get_task


class SuiteError(ValueError):
    """A suite request the suite cannot run (unknown baseline or schedule, no cells, an LO
    without its meta-training config); the message names the problem and the fix."""


AXES = ("in-distribution", "wider", "deeper", "longer", "transformer", "transformer-lowrank",
        "other-data", "cnn")
# axes whose cells are fixed tasks, not derived from the LO: skipped when their data is absent
OPTIONAL_AXES = ("transformer", "transformer-lowrank", "other-data", "cnn")


@dataclasses.dataclass(frozen=True)
class SuiteSpec:
    """How big a suite is. Multipliers are relative to the LO's meta-training config."""
    wider: tuple[int, ...] = (4, 8)
    deeper: int = 5
    longer: int = 5
    baselines: tuple[str, ...] = ("adamw", "muadam", "muon")
    grid_points: int = 4          # LR grid points per baseline (centered subset of its grid)
    seeds: int = 3
    in_distribution: bool = True
    axes: tuple[str, ...] = AXES
    schedule: str = "constant"    # every baseline's LR schedule: "constant" or "cosine"
    fixed_adamw: bool = True      # also report AdamW at its untuned default LR 1e-3
    # μTransfer: on wider cells above this multiplier, μP baselines reuse the LR tuned at the
    # widest cell at or below it, with a 3-point grid around it (0: tune every cell)
    mutransfer_above: int = 0
    # the same on the transformer axis: cells with a d_model above this reuse the LR tuned at
    # the widest cell of their family (same depth and data) at or below it (0: tune every cell)
    lm_mutransfer_above_d: int = 0
    # a tuned LR at an end of its grid: try up to this many more grid steps beyond that end,
    # one cached single-LR group each, until the best is inside (0: report it with ‡)
    extend_edges: int = 0
    # fixed cells (not derived from the LO's meta-training tasks), each with its own baselines
    transformer: tuple[str, ...] = ()           # char-level LM tasks
    transformer_steps: int = 500
    transformer_baselines: tuple[str, ...] = ("adamw", "adamw-cosine", "muadam", "muon",
                                              "schatten")
    lowrank: tuple[str, ...] = ()               # factored-attention LM tasks
    # both AdamW forms, as on every other cell, and the Riemannian low-rank optimizer
    lowrank_baselines: tuple[str, ...] = ("adamw", "adamw-cosine", "riemannian")
    other_data: tuple[str, ...] = ()            # run at the meta-training horizon
    # fixed (axis, task, steps) cells, the same for every LO: they replace the cells derived
    # from the LO's meta-training config on the axes wider, deeper, longer and other-data
    # (the derived cells stay for axes none of these names); ``base_width`` is then the width
    # μTransfer's limit is relative to (``mutransfer_above`` x it)
    cells: tuple[tuple[str, str, int], ...] = ()
    base_width: int = 0
    # the baselines' tuning seed; report seeds are seed_base + 1 .. seed_base + seeds
    seed_base: int = 0
    # every cell also runs each LO at the theta its meta-training started from ("untrained"
    # rows; otherwise only in-distribution cells do): the "what meta-training buys" ablation
    untrained_everywhere: bool = False


SUITES = {
    "smoke": SuiteSpec(wider=(2,), deeper=0, longer=0, baselines=("adamw",), grid_points=2,
                       seeds=2, in_distribution=True),
    "quick": SuiteSpec(wider=(4, 8), deeper=5, longer=5, grid_points=6, seeds=3),
    # The verdict. Its MLP cells are fixed (the cells mulo-cpu's config, widest w128-d3 at
    # horizon 500, derives: 8/16/32x wider, 5x deeper, 25x longer), so every LO is judged on
    # the same tasks; two CNN cells on 28x28 Fashion-MNIST. No task or seed here is a `dev`
    # cell or seed (tests/eval/test_protocol.py).
    "full": SuiteSpec(wider=(8, 16, 32), deeper=5, longer=25, grid_points=7, seeds=3,
                      baselines=("adamw", "adamw-cosine", "muadam", "muon", "modular",
                                 "prodigy"), mutransfer_above=8, lm_mutransfer_above_d=256,
                      extend_edges=2,
                      transformer=("lm-fortunes-d64-l2", "lm-fortunes-d256-l2",
                                   "lm-fortunes-d512-l2", "lm-fortunes-d64-l6"),
                      lowrank=("lm-fortunes-d128-l2-r16",),
                      cells=(("wider", "mlp-fmnist8-w1024-d3", 500),
                             ("wider", "mlp-fmnist8-w2048-d3", 500),
                             ("wider", "mlp-fmnist8-w4096-d3", 500),
                             ("deeper", "mlp-fmnist8-w128-d15", 500),
                             ("longer", "mlp-fmnist8-w128-d3", 12500),
                             ("other-data", "mlp-fmnist28-w1024-d3", 500),
                             ("cnn", "cnn-fmnist28-c32-d3", 500),
                             ("cnn", "cnn-fmnist28-c64-d3", 500)),
                      base_width=128),
    # Selection: held-out cells for choosing between LO variants, sharing no task and no
    # seed with `full` (tests/eval/test_protocol.py), each LO next to its untrained start
    # (what meta-training buys) and the two AdamW forms (constant and warmup-cosine) on
    # 3-point grids, widened at an edge as in `full` (a variant is chosen against AdamW at
    # its best LR, not at a grid end). Seeds 100 (tuning), 101-102 (report).
    "dev": SuiteSpec(baselines=("adamw", "adamw-cosine"), grid_points=3, seeds=2,
                     in_distribution=False, fixed_adamw=False, extend_edges=2,
                     transformer=("lm-stdlib-d128-l2", "lm-stdlib-d64-l4"),
                     transformer_baselines=("adamw", "adamw-cosine"),
                     cells=(("wider", "mlp-fmnist8-w768-d3", 1000),
                            ("deeper", "mlp-fmnist8-w96-d12", 1000),
                            ("longer", "mlp-fmnist8-w96-d3", 4000),
                            ("other-data", "mlp-digits8-w256-d3", 1000),
                            ("cnn", "cnn-fmnist8-c48-d3", 1000)),
                     base_width=96, seed_base=100, untrained_everywhere=True),
    "paper": SuiteSpec(wider=(8, 16, 32, 64), deeper=5, longer=25, grid_points=9, seeds=5,
                       extend_edges=2),
}


@dataclasses.dataclass(frozen=True)
class Cell:
    axis: str
    task: str
    steps: int
    baselines: tuple[str, ...] | None = None    # None: the suite's baselines


def task_name(task: str) -> TaskName:
    """``task`` parsed (:class:`meta_train.tasks.TaskName`, the one task-name grammar).

    Raises:
      SuiteError: not a task name.
    """
    try:
        return TaskName.parse(task)
    except ValueError as e:
        raise SuiteError(str(e)) from None


def cells_for(meta_cfg: dict, spec: SuiteSpec) -> list[Cell]:
    """The (axis, task, steps) cells for an LO meta-trained with ``meta_cfg``."""
    tasks = list(meta_cfg["tasks"])
    horizon = int(meta_cfg["es"]["max_horizon"])
    sized = [(task_name(t).width, t) for t in tasks]
    sized = [(w, t) for w, t in sized if w is not None]
    w, widest = max(sized, key=lambda x: x[0]) if sized else (0, tasks[0])
    wide = task_name(widest)
    fixed = [Cell(a, t, int(n)) for a, t, n in spec.cells]
    replaced = {"wider", "deeper", "longer", "other-data"} if fixed else set()
    out = []
    if spec.in_distribution:
        out += [Cell("in-distribution", t, horizon) for t in tasks]
    if sized and "wider" not in replaced:
        out += [Cell("wider", str(wide.with_width(w * m)), horizon) for m in spec.wider]
    if spec.deeper and wide.depth and "deeper" not in replaced:
        out.append(Cell("deeper", str(wide.with_depth(wide.depth * spec.deeper)), horizon))
    if spec.longer and "longer" not in replaced:
        out.append(Cell("longer", widest, horizon * spec.longer))
    out += [c for c in fixed if c.axis not in OPTIONAL_AXES]
    out += [Cell("transformer", t, spec.transformer_steps, tuple(spec.transformer_baselines))
            for t in spec.transformer]
    out += [Cell("transformer-lowrank", t, spec.transformer_steps,
                 tuple(spec.lowrank_baselines)) for t in spec.lowrank]
    if "other-data" not in replaced:
        out += [Cell("other-data", t, horizon) for t in spec.other_data]
    out += [c for c in fixed if c.axis in OPTIONAL_AXES]
    return [c for c in out if c.axis in spec.axes]


def base_width(meta_cfg: dict, spec: SuiteSpec) -> int:
    """The width μTransfer limits are relative to: the suite's ``base_width`` where its
    cells are fixed, else the widest meta-training width."""
    if spec.cells and spec.base_width:
        return spec.base_width
    return max([_width(t) or 0 for t in meta_cfg["tasks"]])


def tuning_seed(spec: SuiteSpec) -> int:
    return spec.seed_base


def report_seeds(spec: SuiteSpec) -> list[int]:
    return list(range(spec.seed_base + 1, spec.seed_base + spec.seeds + 1))


def _grid(name: str, points: int) -> list[float]:
    g = list(BASELINES[name].lr_grid)
    if points >= len(g):
        return g
    start = (len(g) - points) // 2
    return g[start:start + points]


def _width(task: str) -> int | None:
    return task_name(task).width


def family(task: str) -> str:
    """A task's name with its width wildcarded (``mlp-fmnist8-w*-d3``, ``lm-fortunes-d*-l2``):
    the tasks an LR can transfer between under μP."""
    return task_name(task).family


def transfer_limit(cell: Cell, spec: SuiteSpec, widest: int) -> int:
    """The widest a cell of ``cell``'s axis may be and still be tuned on the full grid; wider
    cells transfer a tuned LR (0: none do). MLPs: ``spec.mutransfer_above`` x the widest
    meta-training width; transformers: ``spec.lm_mutransfer_above_d`` (a d_model)."""
    if cell.axis in ("in-distribution", "wider"):
        return spec.mutransfer_above * widest
    if cell.axis == "transformer":
        return spec.lm_mutransfer_above_d
    return 0


def transfer_grid(name: str, lr: float) -> list[float]:
    """The LRs a μP baseline searches on a cell above its μTransfer limit
    (:func:`transfer_limit`): the LR tuned at the widest cell of the same family at or below
    the limit and its two neighbours on the baseline's grid spacing. Under μP the best LR
    does not move with width (Yang et al., Tensor Programs V, arXiv 2203.03466); which cell
    an LR transfers from is :func:`eval.plan.plan_groups`'s."""
    full = BASELINES[name].lr_grid
    ratio = full[1] / full[0]
    return [float(f"{lr / ratio:.3g}"), lr, float(f"{lr * ratio:.3g}")]


def extend_at_edges(run_one, grid: list[float], finals: list[float], base_grid, steps: int
                    ) -> tuple[list[float], list[float], float]:
    """Widens a tuning sweep whose best LR lies at an end of its grid: up to ``steps`` more
    LRs beyond that end, on the baseline's grid spacing (``base_grid``), each run by
    ``run_one(lr)`` (a cached single-LR group on the tuning seed), stopping as soon as the
    best is inside. Returns the widened grid, its final losses and the added groups'
    compute in seconds."""
    grid, finals, extra = list(grid), list(finals), 0.0
    ratio = base_grid[1] / base_grid[0] if len(base_grid) > 1 else 0.0
    for _ in range(steps if ratio > 1 and len(grid) > 1 else 0):
        i = int(np.argmin(finals))
        if 0 < i < len(grid) - 1:
            break
        up = i == len(grid) - 1
        lr = float(f"{grid[i] * (ratio if up else 1 / ratio):.3g}")
        group = run_one(lr)
        f = final_loss(np.asarray(group["losses"][0][0]))
        f = f if np.isfinite(f) else np.inf
        extra += group_seconds(group)
        grid, finals = (grid + [lr], finals + [f]) if up else ([lr] + grid, [f] + finals)
    return grid, finals, extra


def final_loss(losses: np.ndarray) -> float:
    """The suite's final loss of a curve: the mean of its last 5% of steps."""
    k = max(1, int(round(0.05 * losses.shape[-1])))
    return float(np.mean(losses[..., -k:]))


# A run whose final loss is above 1.5x its initial loss has moved away from every solution,
# not merely stalled: a stalled run ends at ~1x (e.g. ln 10 = 2.303 for a zero readout), and
# the final loss (mean of the last 5% of steps) of a stalled run varies by a few percent.
DIVERGED_RATIO = 1.5


def blew_up(initial, final) -> np.ndarray:
    """Per run: the final loss is non-finite or above ``DIVERGED_RATIO`` x the initial loss."""
    initial = np.asarray(initial, np.float64)
    final = np.asarray(final, np.float64)
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(final) | (final > DIVERGED_RATIO * initial)


def steps_to_target(reference: np.ndarray, candidate: np.ndarray) -> tuple[int, int | None]:
    """(steps the reference needs to reach its lowest loss, steps the candidate needs to
    reach that loss, None if it never does); curves smoothed by a running minimum as in
    :func:`speedup`."""
    ref = np.minimum.accumulate(np.asarray(reference, np.float64))
    cand = np.minimum.accumulate(np.asarray(candidate, np.float64))
    target = ref[-1]
    hit = np.nonzero(cand <= target)[0]
    return int(np.argmax(ref <= target)) + 1, (int(hit[0]) + 1 if hit.size else None)


def seconds_to_target(reference: dict, candidate: dict) -> tuple[float | None, float | None]:
    """Wall-clock seconds each of two suite rows needs to reach the reference row's lowest
    loss: steps (:func:`steps_to_target`) x the row's measured seconds per run-step
    (``wall_s_per_step``, compile excluded); None where a row never reaches it or carries no
    step time."""
    n_ref, n_cand = steps_to_target(reference["mean_curve"], candidate["mean_curve"])
    t_ref, t_cand = reference.get("wall_s_per_step"), candidate.get("wall_s_per_step")
    return (n_ref * t_ref if t_ref else None,
            n_cand * t_cand if (t_cand and n_cand is not None) else None)


def speedup(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Steps the reference needs to reach its lowest loss / steps the candidate needs to
    reach that loss.

    Curves (seed means) are smoothed with a running minimum, so the target is the reference
    curve's minimum, which can lie below its final loss (the mean of its last 5% of steps).
    > 1: faster; < 1: slower; 0: never reaches.
    """
    n_ref, n_cand = steps_to_target(reference, candidate)
    return 0.0 if n_cand is None else n_ref / float(n_cand)


@dataclasses.dataclass(frozen=True)
class LearnedOpt:
    """A loaded learned optimizer under a display label."""
    label: str
    path: str
    theta: Any
    config: Any
    meta: dict

    @property
    def digest(self) -> str:
        return lo_digest(self.theta, self.config)


def lo_digest(theta, config) -> str:
    """16 hex digits identifying a learned optimizer: the float32 values of every leaf of
    ``theta`` (whose shapes its config fixes) and every field of its ``LOConfig``
    (``to_dict``: all dataclass fields, e.g. time_features, tau_clamp and schedule, and the
    resolved step_mult). Fields added to ``LOConfig`` later (``_LATER_FIELDS``) count only
    when they differ from their default, so cells cached before they existed stay valid."""
    flat = np.concatenate([np.ravel(np.asarray(x, np.float32)) for x in jax.tree.leaves(theta)])
    d = config.to_dict()
    defaults = lopt.LOConfig()
    for f in _LATER_FIELDS:
        if d.get(f) == getattr(defaults, f):
            d.pop(f, None)
    return hashlib.sha1(flat.tobytes() + json.dumps(d, sort_keys=True)
                        .encode()).hexdigest()[:16]


_LATER_FIELDS = ("mup_base", "depth_ref", "horizon_ref", "horizon_power", "features",
                 "magnitude", "output_norm", "orthogonalize")


def _depth_rule_key(task_name: str, config) -> int | None:
    """The depth ``L`` a 1/depth-rule LO reads on a task, where it differs from the task's
    number of hidden matrices (transformers: ``lopt.mup.roles.model_depth`` counts residual
    blocks). Such groups record it: groups cached when ``L`` was the matrix count are not
    reused, while MLP groups, where both counts agree, stay valid."""
    if not (config.mup and getattr(config, "depth_ref", 0)):     # μVeLO has no depth rule
        return None
    task = get_task(task_name)
    params = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    depth = lopt.mup.roles.model_depth(params, task.roles)
    hidden = sum(r == "hidden" for r in jax.tree.leaves(task.roles))
    return None if depth == hidden else depth


@functools.lru_cache(maxsize=None)
def data_source(task_name: str) -> str:
    """Where a task's data comes from (``Task.source``, e.g. "fashion-mnist 8x8 (packaged)").

    Raises:
      meta_train.data.DataNotFoundError: the task's data is not on this machine.
      SuiteError: no task has this name.
    """
    from meta_train.data import DataError
    try:
        return get_task(task_name).source
    except DataError:
        raise
    except ValueError as e:             # an unknown or malformed task name
        raise SuiteError(str(e)) from e


def load_los(specs: list[str]) -> list[LearnedOpt]:
    """``["runs/a", "SP=runs/b"]`` -> learned optimizers; the default label is μLO / SP LO."""
    out = []
    for spec in specs:
        label, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        theta, config, meta = lopt.load_theta(path)
        kind = "VeLO" if config.arch == "velo" else "LO"
        label = label or (f"μ{kind}" if config.mup else f"SP {kind}")
        while label in [o.label for o in out]:
            label += "'"
        out.append(LearnedOpt(label, path, theta, config, meta))
    return out


def untrained_theta(lo: LearnedOpt):
    """The theta ``lo``'s meta-training run started from (its seed's init, or the learned
    optimizer it was started from with ``init_from``; ``lopt.start_theta``, as
    ``meta_train.loop`` does)."""
    from meta_train.loop import run_keys
    cfg = lo.meta.get("config") or {}
    return lopt.start_theta(run_keys(cfg.get("seed", 0))[0], lo.config, cfg.get("init_from", ""))


def make_lo(theta, config, roles, num_steps: int):
    """The one place the suite builds a learned optimizer: from its stored config, on a task's
    role tree, told the run's total step count (as optax schedules are told; LOs without
    fraction-of-training features or a schedule ignore it). The suite's tasks carry μP in
    the model (readout x 1/fan_in), hence ``mup_in="model"``."""
    return lopt.make_from_config(theta, config, roles=roles, mup_in="model",
                                 num_steps=int(num_steps))


def variant(task: str, parametrization: str) -> str:
    """The task name in a parametrization: ``-sp`` added for "sp", removed for "mup"."""
    return str(task_name(task).variant(parametrization))


def baseline_key(task_name: str, name: str, steps: int, lrs, seeds,
                 schedule: str | None = None, adam_lr: float | None = None) -> dict:
    """The cache key of a group of baseline ``name``'s runs (see :meth:`Runner.run_baseline`):
    task, data source and digests, the baseline's code digest, steps, LRs, seeds, and the
    schedule, AdamW LR and layer inputs where they apply."""
    b = BASELINES[name]
    key = {"task": task_name, "source": data_source(task_name), "opt": name,
           "steps": steps, "lrs": list(lrs), "seeds": list(seeds),
           "code": keys.baseline_digest(name), **inputs_key(task_name)}
    if (schedule or b.schedule) != "constant":   # constant runs: no schedule entry
        key["schedule"] = schedule or b.schedule
    if adam_lr is not None:
        key["adam_lr"] = adam_lr
    if b.needs_activations:     # what it was given: layer inputs, or none (whitened)
        key["activations"] = ("layer inputs" if get_task(task_name).activations is not None
                              else "none")
    return key


def inputs_key(task_name: str) -> dict:
    """The key entries of a task's inputs: digests of its initial parameters and of its data
    arrays (:mod:`eval.keys`), so a changed init or dataset under an unchanged name is a
    cache miss."""
    return {"init": keys.init_digest(task_name),
            "data": keys.data_digest(get_task(task_name))}


LOCK_POLL_S = 5.0     # how often a run waiting for another process's groups looks again
WAIT_NOTE_S = 600.0   # how often it says what it waits for


class Runner(GroupCache):
    """Runs and caches groups of training runs: one compile per (task, optimizer, steps), LR
    grid and seeds vmapped; caching, sweep splitting (``group_runs``) and the locks that let
    processes share ``out`` are :class:`eval.cache.GroupCache`'s."""

    def __init__(self, out: Path, cached_only: bool = False, group_runs: int | None = None):
        if group_runs is not None and group_runs < 1:
            raise SuiteError(f"group_runs must be at least 1, got {group_runs}")
        super().__init__(out, cached_only=cached_only, group_runs=group_runs)

    def run_baseline(self, task_name: str, name: str, steps: int, lrs, seeds,
                     schedule: str | None = None, adam_lr: float | None = None) -> dict:
        """``schedule``: None runs the baseline's own schedule (constant except for entries
        like ``adamw-cosine``); "cosine" runs any baseline with warmup and cosine decay.
        ``adam_lr``: the AdamW LR of a baseline with ``adam_lr_from`` (None: its default)."""
        b = BASELINES[name]
        key = baseline_key(task_name, name, steps, lrs, seeds, schedule, adam_lr)
        return self._split(key, lambda lr_chunk, seed_chunk: self._compute(
            task_name, lambda lr, task: b.build(lr, task.roles, num_steps=steps,
                                                schedule=schedule, adam_lr=adam_lr),
            steps, lr_chunk, seed_chunk, b.needs_activations))

    def run_lo(self, task_name: str, lo: LearnedOpt, steps: int, seeds, untrained=False):
        """The cache key holds the digest of the theta that runs (the initial one when
        ``untrained``) and of the full LO config, and the task's data source."""
        theta = untrained_theta(lo) if untrained else lo.theta
        key = {"task": task_name, "source": data_source(task_name),
               "opt": "lo-init" if untrained else "lo", "steps": steps, "lrs": [0.0],
               "seeds": list(seeds), "lo_digest": lo_digest(theta, lo.config),
               "code": keys.lo_code_digest(make_lo), **inputs_key(task_name)}
        depth = _depth_rule_key(task_name, lo.config)
        if depth is not None:
            key["depth"] = depth
        return self._split(key, lambda lr_chunk, seed_chunk: self._compute(
            task_name, lambda lr, task: make_lo(theta, lo.config, task.roles, steps),
            steps, lr_chunk, seed_chunk, False, lo.config.needs_loss))

    def _compute(self, task_name, make, steps, lrs, seeds, needs_activations,
                 pass_loss=False):
        task = get_task(task_name)
        extra = task.extra_args(needs_activations)

        def one(lr, seed):
            return train(task, make(lr, task), key=jax.random.PRNGKey(seed), num_steps=steps,
                         eval_batches=None, extra_args=extra,
                         pass_loss=pass_loss)

        lr_arr = jnp.asarray(lrs, jnp.float32)
        seed_arr = jnp.asarray(seeds, jnp.uint32)
        fn = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))
        t0 = time.time()
        compiled = fn.lower(lr_arr, seed_arr).compile()
        t1 = time.time()
        res = compiled(lr_arr, seed_arr)
        jax.block_until_ready(res.losses)
        wall = time.time() - t1
        return {"losses": np.asarray(res.losses).tolist(),
                "test_loss": np.asarray(res.test_loss[..., -1]).tolist(),
                "test_accuracy": np.asarray(res.test_accuracy[..., -1]).tolist(),
                "diverged": np.asarray(res.diverged).tolist(),
                "test_metrics": ("whole test split" if task.split_metrics is not None
                                 else "8 sampled test batches (online data)"),
                "wall_s": wall, "compile_s": t1 - t0, "runs": len(lrs) * len(seeds),
                "steps": steps, "host": keys.host_record(),
                "data_digest": keys.data_digest(task)}


def run_suite(lo_paths, suite: str, out: Path, progress: bool = True,
              baselines: tuple[str, ...] | None = None, overrides: dict | None = None,
              cached_only: bool = False, log: Callable[[str], None] | None = None,
              group_runs: int | None = None, shard: tuple[int, int] | None = None) -> dict:
    """Runs a named suite for one or more LOs (paths, or ``label=path``).

    The first LO's meta-training config defines the cells; every optimizer runs each cell in
    its own parametrization (μP for μLO, μAdam, Muon; SP for SP LO, AdamW, SGD, Prodigy).
    The groups to compute come from :func:`eval.plan.plan_groups`; :func:`execute` runs them.
    ``cached_only``: train nothing; rows whose groups are not in ``<out>/cells`` yet are left
    out and listed in the document's ``"not_run"`` (cells with no row at all are dropped).
    ``log``: called with the cell plan (axis, task, steps) before anything trains, and with a
    note for each later LO whose own meta-training config would define other cells.
    ``group_runs``: at most this many runs per vmapped group (see :class:`Runner`).
    ``shard``: ``(i, n)``: run only part ``i`` of ``n`` of the cells (:mod:`eval.shard`;
    ``python -m eval.merge`` joins the parts).
    Returns the results document.
    """
    spec = dataclasses.replace(SUITES[suite], **(overrides or {}))
    los = load_los([lo_paths] if isinstance(lo_paths, str) else list(lo_paths))
    meta_cfg = los[0].meta.get("config")
    if not meta_cfg:
        raise SuiteError(f"{los[0].path} carries no meta-training config; the suite "
                         "needs one to define its axes")
    cells = cells_for(meta_cfg, spec)
    if shard is not None:
        cells = shard_cells(cells, spec, meta_cfg, shard)
    if not cells:
        raise SuiteError(f"suite {suite!r} has no cells on axes {', '.join(spec.axes)} "
                         f"for {los[0].path}")
    ctx = _Context(spec, los, SuitePlan.make(cells, los, spec, baselines, meta_cfg),
                   Runner(out, cached_only=cached_only, group_runs=group_runs))
    if log is not None:
        for line in cell_plan(los, ctx.plan.cells, spec) + ctx.plan.skipped_lines():
            log(line)
    results, not_run = run_passes(ctx, f"eval {suite}", progress, log)
    if not results:
        raise SuiteError(f"nothing of this suite is cached in {out}/cells yet; run it "
                         "without --cached-only (or point --out at the run in progress)")
    return {"suite": suite, "cells_defined_by": los[0].label,
            "los": [{"label": lo.label, "path": str(lo.path), "config": lo.config.to_dict(),
                     "meta_step": lo.meta.get("step"), "digest": lo.digest,
                     "meta_config": lo.meta.get("config")} for lo in los],
            "spec": dataclasses.asdict(spec), "baselines": list(ctx.plan.names),
            "report_seeds": report_seeds(spec), "tuning_seed": tuning_seed(spec),
            "cells": results, "skipped": ctx.plan.skipped,
            **({"not_run": not_run} if cached_only else {}),
            **({"shard": f"{shard[0]}/{shard[1]}"} if shard is not None else {}),
            "host": host_info(), "full_mean_curves": True}   # in memory, nothing is rounded


@dataclasses.dataclass(frozen=True)
class SuitePlan:
    """A suite's cells (those whose data is here), their row labels and baselines, the
    cells skipped for missing data, and the steps (:func:`eval.plan.plan_groups`)."""
    cells: list[Cell]
    sources: dict            # cell -> data source
    skipped: list[dict]
    names: tuple[str, ...]   # the suite's baselines
    cell_names: dict         # cell -> the baselines tuned there
    labels: dict[str, str]   # baseline -> row label
    steps: list[Step]

    @staticmethod
    def make(cells: list[Cell], los: list[LearnedOpt], spec: SuiteSpec,
             baselines: tuple[str, ...] | None, meta_cfg: dict) -> "SuitePlan":
        """Raises SuiteError for an unknown baseline or schedule, or two baselines that name
        one row; missing data of a required axis raises DataNotFoundError before anything
        trains, and skips a cell of an optional axis."""
        names = tuple(baselines) if baselines else spec.baselines
        # a fixed cell's own baselines (those the user listed, if they listed any)
        cell_names = {c: names if c.baselines is None else
                      tuple(n for n in c.baselines if not baselines or n in baselines)
                      for c in cells}
        unknown = [n for n in dict.fromkeys(names + sum(cell_names.values(), ()))
                   if n not in BASELINES]
        if unknown:
            raise SuiteError(f"unknown baseline(s) {unknown}; choose from {sorted(BASELINES)}")
        if spec.schedule not in SCHEDULES:
            raise SuiteError(f"unknown schedule {spec.schedule!r}; choose from "
                             f"{', '.join(SCHEDULES)}")
        for group in set(cell_names.values()):
            if len({row_label(n, spec.schedule) for n in group}) < len(group):
                raise SuiteError(f"with schedule {spec.schedule!r} the baselines {list(group)} "
                                 "name the same optimizer twice; list each once")
        labels = {n: row_label(n, spec.schedule)
                  for n in dict.fromkeys(names + sum(cell_names.values(), ()))}
        from meta_train.data import DataNotFoundError
        sources, skipped = {}, []
        for c in cells:
            try:
                sources[c] = data_source(variant(c.task, "mup"))
            except DataNotFoundError as e:
                if c.axis not in OPTIONAL_AXES:
                    raise
                skipped.append({"axis": c.axis, "task": c.task, "reason": str(e)})
        cells = [c for c in cells if c in sources]
        widest = base_width(meta_cfg, spec)
        steps = plan_groups(
            cells, [lo.label for lo in los], lambda c: cell_names[c],
            fixed_adamw=spec.fixed_adamw,
            untrained=lambda c: spec.untrained_everywhere or c.axis == "in-distribution",
            limit_of=lambda c: transfer_limit(c, spec, widest))
        return SuitePlan(cells, sources, skipped, names, cell_names, labels, steps)

    def skipped_lines(self) -> list[str]:
        return [f"skipped {s['axis']} cell {s['task']}: {s['reason']}" for s in self.skipped]


@dataclasses.dataclass(frozen=True)
class _Context:
    spec: SuiteSpec
    los: list[LearnedOpt]
    plan: SuitePlan
    runner: "Runner"


def run_passes(ctx: _Context, desc: str, progress: bool,
               log: Callable[[str], None] | None) -> tuple[list[dict], list[dict]]:
    """Executes the plan until no step waits on another process sharing ``out``: a pass
    computes or reads each step; rows whose groups other processes hold are awaited (until
    one of them is done), then a pass reads them and computes what depended on them (a
    tuned baseline's report seeds, a wider cell's μTransfer) and any group no one holds.
    Returns (cells' results, rows not run)."""
    attempt = 0
    while True:
        attempt += 1
        bar = progress_bar(len(ctx.plan.steps),
                           desc=desc + (f" (pass {attempt})" if attempt > 1 else ""),
                           unit="group", enabled=progress, every=1)
        done = execute(ctx, bar)
        bar.close()
        results, not_run, busy = assemble(ctx, done)
        if not busy:
            return results, not_run
        said = 0.0
        while all(is_held(e.lock) for e in busy):
            if log is not None and time.time() - said > WAIT_NOTE_S:
                log(f"waiting for {len(busy)} group(s) other processes are computing: "
                    + "; ".join(dict.fromkeys(str(e) for e in busy)))
                said = time.time()
            time.sleep(LOCK_POLL_S)


def execute(ctx: _Context, bar) -> list:
    """Every step of the plan once, in order: per step its result (a row's summary; for a
    tune step the tuned LR and its sweep), or the :class:`eval.cache.NotCached` that kept it
    from running (its own, or that of a step it needs)."""
    done: list = []
    for step in ctx.plan.steps:
        failed = [done[i] for i in step.needs if isinstance(done[i], NotCached)]
        if failed:
            done.append(failed[0])
        else:
            try:
                done.append(_run_step(ctx, step, done))
            except NotCached as e:
                done.append(e)
        bar.update(1)
    return done


def _run_step(ctx: _Context, step: Step, done: list) -> dict:
    cell, spec, runner = ctx.plan.cells[step.cell], ctx.spec, ctx.runner
    seeds = report_seeds(spec)
    if step.kind in ("lo", "untrained"):
        lo = next(o for o in ctx.los if o.label == step.name)
        task = variant(cell.task, "mup" if lo.config.mup else "sp")
        return _summary(runner.run_lo(task, lo, cell.steps, seeds,
                                      untrained=step.kind == "untrained"), 0, task=task)
    if step.kind == "fixed-adamw":
        task = variant(cell.task, "sp")
        return _summary(runner.run_baseline(task, "adamw", cell.steps, [1e-3], seeds), 0,
                        lr=1e-3, task=task)
    name, schedule = step.name, None if spec.schedule == "constant" else spec.schedule
    task = variant(cell.task, BASELINES[name].parametrization)
    adam_lr = None if step.adam_lr is None else done[step.adam_lr]["lr"]
    if step.kind == "tune":
        grid, source = _grid(name, spec.grid_points), None
        if step.transfer is not None:
            source = _width(ctx.plan.cells[done[step.transfer]["cell"]].task)
            grid = transfer_grid(name, done[step.transfer]["lr"])

        def run(lrs):
            return runner.run_baseline(task, name, cell.steps, lrs, [tuning_seed(spec)],
                                       schedule=schedule, adam_lr=adam_lr)
        tune = run(grid)
        finals = [final_loss(np.asarray(l[0])) for l in tune["losses"]]
        grid, finals, extra_s = extend_at_edges(
            lambda lr: run([lr]), grid, [f if np.isfinite(f) else np.inf for f in finals],
            BASELINES[name].lr_grid, spec.extend_edges)
        return {"cell": step.cell, "lr": grid[int(np.argmin(finals))], "grid": grid,
                "tune": finals, "seconds": group_seconds(tune) + extra_s, "source": source}
    tuned = done[step.needs[0]]
    rep = runner.run_baseline(task, name, cell.steps, [tuned["lr"]], seeds,
                              schedule=schedule, adam_lr=adam_lr)
    row = _summary(rep, 0, lr=tuned["lr"], grid=tuned["grid"], tune=tuned["tune"], task=task,
                   **({"mutransfer_from_width": tuned["source"]} if tuned["source"] else {}),
                   **({"adam_lr": adam_lr} if adam_lr is not None else {}),
                   schedule=schedule or BASELINES[name].schedule)
    row["compute_s"] += tuned["seconds"]
    return row


def assemble(ctx: _Context, done: list) -> tuple[list[dict], list[dict], list[Busy]]:
    """The executed plan as the results' cells: per cell its rows (the baselines in the
    suite's order, AdamW at 1e-3, then the LOs), each with its step speedup over AdamW;
    the rows not run, and the groups other processes hold."""
    plan = ctx.plan
    rows: dict[int, dict[str, dict]] = {i: {} for i in range(len(plan.cells))}
    not_run, busy = [], []
    for step, res in zip(plan.steps, done):
        if step.kind == "tune":         # its row is its report step's
            continue
        label = {"lo": step.name, "untrained": untrained_label(step.name),
                 "fixed-adamw": "adamw@1e-3"}.get(step.kind) or plan.labels[step.name]
        cell = plan.cells[step.cell]
        if isinstance(res, Busy):
            busy.append(res)
        elif isinstance(res, NotCached):
            not_run.append({"axis": cell.axis, "task": cell.task, "steps": cell.steps,
                            "optimizer": label, "group": str(res)})
        else:
            rows[step.cell][label] = res
    results = []
    for i, cell in enumerate(plan.cells):
        order = [plan.labels[n] for n in plan.cell_names[cell]] + ["adamw@1e-3"]
        opts = {k: rows[i][k] for k in order if k in rows[i]}
        opts.update({k: v for k, v in rows[i].items() if k not in opts})
        ref = opts.get("adamw", opts.get("adamw-cosine"))
        for o in opts.values():
            if ref is not None:
                o["speedup_vs_adamw"] = speedup(ref["mean_curve"], o["mean_curve"])
        if opts:
            results.append({"axis": cell.axis, "task": variant(cell.task, "mup"),
                            "steps": cell.steps, "source": plan.sources[cell],
                            "optimizers": opts})
    return results, not_run, busy


def shard_cells(cells: list[Cell], spec: SuiteSpec, meta_cfg: dict,
                shard: tuple[int, int]) -> list[Cell]:
    """Part ``shard = (i, n)`` of ``cells`` (:func:`eval.shard.select`): cells that may
    take a μTransfer LR run with the rest of their family."""
    from eval.shard import select
    widest = base_width(meta_cfg, spec)

    def transfers(c: Cell) -> bool:
        limit, w = transfer_limit(c, spec, widest), _width(c.task)
        return bool(limit and w and w > limit)
    return select(cells, shard, lambda c: family(c.task), transfers)


def cell_plan(los, cells: list[Cell], spec: SuiteSpec) -> list[str]:
    """Lines describing the cells a suite will run, and which LO's meta-training config
    defined them; a note for each later LO whose own config would define other cells (list
    that LO first to evaluate on its own horizon and widths)."""
    first = los[0]
    lines = [f"cells (fixed by the suite; in-distribution ones from {first.label}'s "
             "meta-training config):" if spec.cells else
             f"cells (defined by {first.label}'s meta-training config):"]
    lines += [f"  {c.axis:<20} {c.task:<28} {c.steps:>6} steps" for c in cells]
    def derived(cs):        # the fixed cells of the optional axes are the same for every LO
        return {(c.axis, c.steps, c.task) for c in cs if c.axis not in OPTIONAL_AXES}
    own = derived(cells)
    for lo in los[1:]:
        cfg = lo.meta.get("config")
        if not cfg:
            continue
        theirs = derived(cells_for(cfg, spec))
        if theirs != own:
            horizon = cfg.get("es", {}).get("max_horizon")
            lines.append(f"note: {lo.label} was meta-trained with horizon {horizon} on "
                         f"{', '.join(cfg.get('tasks', []))}; it runs on {first.label}'s "
                         f"cells above (list it first to run the cells its own config defines)")
    cfg = first.meta.get("config") or {}
    widest = base_width(cfg, spec) if cfg.get("tasks") else 0
    for c in cells:     # μTransfer reads LRs tuned in this run only: say where they come from
        limit, w = transfer_limit(c, spec, widest), _width(c.task)
        if not limit or not w or w <= limit:
            continue
        src = [_width(o.task) for o in cells if family(o.task) == family(c.task)
               and transfer_limit(o, spec, widest) == limit and (_width(o.task) or 0) <= limit]
        if not src:
            lines.append(f"note: {c.task} is above the μTransfer limit ({limit}) but no cell "
                         "of its family at or below it runs here: its μP baselines are tuned "
                         "on their full grid")
        elif max(src) < limit:
            lines.append(f"note: {c.task}'s μP baselines transfer the LR tuned at width "
                         f"{max(src)}, the widest cell of its family at or below {limit} here")
    return lines


def row_label(name: str, schedule: str) -> str:
    """A baseline's row in the results: its name, with ``-<schedule>`` when the suite runs it
    under a schedule other than its own (``adamw`` under "cosine" is ``adamw-cosine``)."""
    if schedule == "constant" or BASELINES[name].schedule == schedule:
        return name
    return f"{name}-{schedule}"


def host_info() -> dict:
    """Where a suite ran. XLA:CPU splits some reductions by the number of threads it may use,
    so learned-optimizer runs are bit-reproducible only at the same thread count (a different
    count perturbs the last float bits, which a learned optimizer's trajectory can amplify to
    seed-noise-sized differences; the baselines measured here were unaffected)."""
    import os
    import platform
    try:
        threads = len(os.sched_getaffinity(0))
    except AttributeError:      # not Linux
        threads = os.cpu_count()
    return {"cpu_threads": threads, "machine": platform.machine(),
            "devices": [str(d) for d in jax.devices()], "jax": jax.__version__}


def _stride(steps: int) -> int:
    """Stride of the stored per-seed curves: at most 500 points per curve."""
    return max(1, -(-steps // 500))


def _summary(group: dict, lr_index: int, **extra) -> dict:
    losses = np.asarray(group["losses"][lr_index], np.float64)     # [seeds, steps]
    finals = np.array([final_loss(l) for l in losses])
    return {"final_train_loss": finals.tolist(),
            "initial_train_loss": losses[:, 0].tolist(),
            # per seed, the highest loss of the whole run (non-finite and above 1e3 read as
            # 1e3): a run that spikes mid-run and recovers ends like a stable one, and the
            # strided seed_curves can step over the spike (eval.report.peak_ratio)
            "peak_train_loss": np.nan_to_num(np.minimum(losses, 1e3), nan=1e3).max(1).tolist(),
            "final_mean": float(np.mean(finals)), "final_std": float(np.std(finals)),
            "test_loss": group["test_loss"][lr_index],
            "test_accuracy": group["test_accuracy"][lr_index],
            "test_metrics": group.get("test_metrics", COMPATIBLE_VERSIONS[1]),
            "suite_version": group.get("version", 1),
            # jax/optax versions and threads it ran with (None: cached before it was recorded)
            "host": group.get("host"),
            "data_digest": group.get("data_digest"),    # eval.merge joins rows of one data
            # the run's own non-finite flag, or a final loss far above the initial one
            "diverged": bool(any(group["diverged"][lr_index])
                             or blew_up(losses[:, 0], finals).any()),
            "mean_curve": np.mean(np.minimum(losses, 1e3), 0).tolist(),
            # per-seed curves at every _stride(steps)-th step (<= 500 points), for
            # bootstrap intervals over seeds (eval.report.bootstrap_speedup)
            "seed_curves": np.minimum(losses, 1e3)[:, ::_stride(losses.shape[1])].tolist(),
            # compile excluded; the runs of a group are vmapped, so this is per run-step
            "wall_s_per_step": group["wall_s"] / (group["runs"] * group["steps"]),
            # the group's seconds, compile included (a baseline adds its tuning group's)
            "compute_s": group_seconds(group), **extra}


def group_seconds(group: dict) -> float:
    """Seconds one cached group took: its compile plus its run."""
    return float(group.get("wall_s", 0.0)) + float(group.get("compile_s", 0.0))
