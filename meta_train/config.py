"""Meta-training configuration: one frozen dataclass and named presets.

Presets (``PRESETS``):

* ``smoke``: seconds; the tests run the real entry point with it.
* ``quick``: a few minutes on 2 CPU cores; the README's main job. μLO (μP base width 512,
  1/depth hidden steps) on 8x8 Fashion-MNIST MLPs of width 32 and 64.
* ``cpu``: a real run on a 2-core machine (~25 min alone): μLO_M over widths 32/64/128,
  horizons 50-500 in truncations of 20.
* ``cpu-frac``: the ``cpu`` μLO continued with fraction-of-training features, a cosine
  step schedule, horizons 100-2000 and a depth-6 task (~1 h on 2 cores).
* ``cpu-base``: ``cpu-frac``'s LO with μP base width 512 and 1/depth hidden steps,
  continued from ``mulo-frac-cpu`` (400 outer steps).
* ``velo-smoke``, ``velo-cpu``: μVeLO (:mod:`lopt.learned.velo`) meta-trained the same way; the
  ``-sp`` twins train the SP VeLO of identical architecture.
* ``paper``: the published GPU-scale μLO recipe (Thérien et al., arXiv 2406.00153): PES,
  K=50, sigma=0.01, 8 pairs per task, widths 128/512/1024 (depth 3), AdamW
  warmup-cosine 3e-10 -> 3e-3 -> 1e-3, global-norm clip 1, 5000 outer steps.

Each preset has an ``-sp`` twin (``quick-sp``, ``cpu-sp``, ...): an SP learned optimizer
meta-trained identically on the standard-parametrized versions of the same tasks.

Every field can be overridden from the command line (``--es.num_pairs 16``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Mapping

from lopt.learned import COMPACT, LOConfig, config_from_dict
from lopt.learned.velo import MUVELO, VeLOConfig
from meta_train.es import ESConfig, check_fields


# The most one run takes, checked before anything runs. One truncation (``unroll_length``
# inner steps of ``2 num_pairs`` runs per task) and one validation are each one compiled
# computation; a signal abandons it rather than waiting for it (meta_train.loop), and these
# keep a run inside what a machine can compile and hold (the paper preset: unroll 50,
# horizons up to 1000, 8 pairs).
LIMITS = {"es.unroll_length": 10_000, "es.max_horizon": 1_000_000, "es.num_pairs": 4096,
          "validate_steps": 1_000_000, "validate_seeds": 1000, "outer_steps": 10_000_000}


@dataclasses.dataclass(frozen=True)
class MetaTrainConfig:
    """A whole meta-training run.

    Attributes:
      tasks: task names; one estimator per task, gradients averaged.
      lo: learned-optimizer architecture and variant: an ``LOConfig`` (μLO or SP LO) or a
        ``VeLOConfig`` (μVeLO or SP VeLO).
      es: gradient estimator settings.
      outer_steps: number of meta-updates.
      meta_lr: peak meta learning rate (AdamW).
      final_lr: meta learning rate at the end of the cosine decay.
      warmup_steps: linear warmup from ~0 (3e-10) to meta_lr; load-bearing for stability.
      weight_decay: AdamW weight decay on theta.
      clip_norm: global-norm clip of the ES gradient.
      seed: one key determines the whole run.
      checkpoint_every: save every this many outer steps (and at exit).
      keep_checkpoints: how many recent checkpoints to keep.
      validate_every: quick validation every this many outer steps (0: never).
      validate_task: held-out task for validation ("" = the first training task).
      validate_steps: inner steps of each validation run.
      validate_seeds: validation runs (fixed held-out seeds) averaged.
      init_from: start theta from this learned optimizer (shipped name, run or checkpoint
        directory) instead of a random init; inputs the new architecture adds start at zero
        weight (``lopt.extend_theta``). "" = random init.
      task_balance: how the per-task estimates make one gradient. "mean": their plain mean,
        so a task whose estimate is larger (a small or deep MLP's, about 2-3x a char LM's at
        the compact recipe's start) steers more. "norm": each estimate is rescaled to the
        mean of the tasks' norms first, so every task's direction weighs the same.
    """
    tasks: tuple[str, ...] = ("mlp-fmnist8-w32-d3", "mlp-fmnist8-w64-d3")
    lo: LOConfig | VeLOConfig = LOConfig()
    es: ESConfig = ESConfig()
    outer_steps: int = 300
    meta_lr: float = 3e-3
    final_lr: float = 1e-3
    warmup_steps: int = 30
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    validate_every: int = 100
    validate_task: str = ""
    validate_steps: int = 200
    validate_seeds: int = 2
    init_from: str = ""
    task_balance: str = "mean"

    def __post_init__(self):
        """Raises ValueError (one line, naming the field) on values the loop cannot use."""
        check_fields(self)
        if not isinstance(self.lo, (LOConfig, VeLOConfig)) or not isinstance(self.es, ESConfig):
            raise ValueError("lo must be an LOConfig or VeLOConfig, es an ESConfig")
        if not (isinstance(self.tasks, tuple) and self.tasks
                and all(isinstance(t, str) and t for t in self.tasks)):
            raise ValueError(f"tasks must be a non-empty list of task names, got {self.tasks!r}")
        if self.task_balance not in ("mean", "norm"):
            raise ValueError(f"task_balance must be 'mean' or 'norm', got {self.task_balance!r}")
        for name, lo in (("outer_steps", 1), ("checkpoint_every", 1), ("keep_checkpoints", 1),
                         ("warmup_steps", 0), ("validate_every", 0), ("validate_steps", 1),
                         ("validate_seeds", 1)):
            if getattr(self, name) < lo:
                raise ValueError(f"{name} must be >= {lo}, got {getattr(self, name)}")
        for name in ("meta_lr", "clip_norm"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        for name in ("final_lr", "weight_decay"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        for name, hi in LIMITS.items():
            v = self.es if name.startswith("es.") else self
            v = getattr(v, name.removeprefix("es."))
            if v > hi:
                raise ValueError(f"{name} must be <= {hi}, got {v} (meta_train.config.LIMITS: "
                                 "the most one run is built to take)")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["tasks"] = list(self.tasks)
        if self.lo.arch != "mlp":   # VeLO; μLO configs stay as older runs wrote them
            d["lo"] = self.lo.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MetaTrainConfig":
        """Inverse of :meth:`to_dict`; raises ValueError on missing, unknown or mistyped
        fields (a damaged ``config.json``)."""
        try:
            d = dict(d)
            if not isinstance(d["tasks"], (list, tuple)):
                raise ValueError(f"tasks must be a list, got {d['tasks']!r}")
            d["tasks"] = tuple(d["tasks"])
            for name, make in (("lo", config_from_dict), ("es", lambda x: ESConfig(**x))):
                try:
                    d[name] = make(d[name])
                except ValueError as e:
                    raise ValueError(f"{name}.{e}") from None
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a meta-training config ({type(e).__name__}: {e})") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _pes(unroll: int, horizons: tuple[int, int], pairs: int = 8) -> ESConfig:
    """The presets' estimator: PES, sigma 0.01, ``pairs`` antithetic pairs."""
    return ESConfig(method="pes", num_pairs=pairs, sigma=0.01, unroll_length=unroll,
                    min_horizon=horizons[0], max_horizon=horizons[1])


PRESETS: dict[str, MetaTrainConfig] = {
    "smoke": MetaTrainConfig(
        tasks=("mlp-digits8-w16-d2",),
        es=_pes(unroll=5, horizons=(10, 30), pairs=2),
        outer_steps=6, warmup_steps=2, checkpoint_every=2, validate_every=3,
        validate_steps=20, validate_seeds=1),
    # μP relative to base width 512 with 1/depth hidden steps, as mulo-base-cpu (below):
    # with the classic absolute 1/fan_in a 5-minute μLO lost to AdamW(1e-3) at 4x/8x width
    "quick": MetaTrainConfig(
        tasks=("mlp-fmnist8-w32-d3", "mlp-fmnist8-w64-d3"),
        lo=LOConfig(mup_base=512.0, depth_ref=2, step_mult=1.5625e-4),
        es=_pes(unroll=20, horizons=(50, 200)),
        outer_steps=300, warmup_steps=30, meta_lr=3e-3, final_lr=1e-3, checkpoint_every=50,
        validate_every=100, validate_task="mlp-fmnist8-w128-d3", validate_steps=200),
    "cpu": MetaTrainConfig(
        tasks=("mlp-fmnist8-w32-d3", "mlp-fmnist8-w64-d3", "mlp-fmnist8-w128-d3"),
        es=_pes(unroll=20, horizons=(50, 500)),
        outer_steps=1000, warmup_steps=100, meta_lr=3e-3, final_lr=1e-3,
        checkpoint_every=100, validate_every=250, validate_task="mlp-fmnist8-w256-d3",
        validate_steps=500),
    # μLO told the run's length: VeLO's fraction-of-training features, the classic time
    # features held at their meta-training range (t <= 500), a cosine step schedule, horizons
    # 100-2000 and a deeper task; starts from the shipped mulo-cpu (62 min of the `cpu`
    # recipe), whose behaviour it reproduces exactly at outer step 0 on short runs.
    "cpu-frac": MetaTrainConfig(
        tasks=("mlp-fmnist8-w32-d3", "mlp-fmnist8-w64-d6", "mlp-fmnist8-w128-d3"),
        lo=LOConfig(time_features="fraction", tau_clamp=500, schedule="cosine"),
        es=_pes(unroll=20, horizons=(100, 2000)),
        outer_steps=800, warmup_steps=50, meta_lr=1e-3, final_lr=3e-4,
        checkpoint_every=50, validate_every=200, validate_task="mlp-fmnist8-w256-d3",
        validate_steps=2000, init_from="mulo-cpu"),
}
# the `cpu` recipe at GPU scale: 28x28 inputs, widths 128-1024, longer truncations
PRESETS["paper"] = dataclasses.replace(
    PRESETS["cpu"],
    tasks=("mlp-fmnist28-w128-d3", "mlp-fmnist28-w512-d3", "mlp-fmnist28-w1024-d3"),
    es=_pes(unroll=50, horizons=(100, 1000)), outer_steps=5000, checkpoint_every=250,
    validate_every=500, validate_task="mlp-fmnist28-w2048-d3", validate_steps=1000)

# cpu-frac's LO with μP base width 512 and 1/depth hidden steps (LOConfig.mup_base,
# depth_ref); step_mult 1e-2/64 keeps the input layer's step where an Adam-style tuning of
# the base put it (README, "mulo-base-cpu"). Continues mulo-frac-cpu for 400 outer steps.
PRESETS["cpu-base"] = dataclasses.replace(
    PRESETS["cpu-frac"],
    lo=dataclasses.replace(PRESETS["cpu-frac"].lo, mup_base=512.0, depth_ref=2,
                           step_mult=1.5625e-4),
    outer_steps=400, warmup_steps=30, checkpoint_every=25, init_from="mulo-frac-cpu")

# μVeLO (lopt.learned.velo, the μLO paper's second architecture) through the same estimator. With
# VeLO's reference constants a random theta barely moves a task (step_mult 1e-3, and the
# even mixture of 8 random MLPs has weights sqrt(8) x smaller than one MLP's init, so its
# output is 8^1.5 ~ 23x smaller); a CPU budget of outer steps cannot grow that. interp_mult sqrt(8)
# restores the per-layer init scale and step_mult 1e-2 is μLO's μP default, so μVeLO starts
# where μLO starts (tests/meta_train/test_velo_meta.py measures both).
_VELO_CPU = dataclasses.replace(MUVELO, step_mult=1e-2, interp_mult=math.sqrt(8))
PRESETS["velo-smoke"] = dataclasses.replace(PRESETS["smoke"], lo=_VELO_CPU)
PRESETS["velo-cpu"] = MetaTrainConfig(
    tasks=("mlp-fmnist8-w32-d3", "mlp-fmnist8-w64-d6", "mlp-fmnist8-w128-d3"),
    lo=_VELO_CPU,
    es=_pes(unroll=20, horizons=(100, 1000)),
    outer_steps=600, warmup_steps=50, meta_lr=3e-3, final_lr=1e-3,
    checkpoint_every=25, validate_every=100, validate_task="mlp-fmnist8-w256-d3",
    validate_steps=1000)


# The compact μLO (lopt.COMPACT: 8 normalized features, hidden 8, per-tensor normalized
# direction) with a magnitude head that can learn the step size and its schedule: the step is
# the normalized direction x exp(a) x a cosine decay (exp_mult 1: a meta-step of 1e-3 on the
# head's bias moves the step by 0.1%; the hand-set start has a = 0, so it starts as a cosine
# schedule). Meta-trained from its hand-set Adam direction (init_from="adam") on a mix of model
# kinds: 8x8 Fashion-MNIST MLPs of three widths and two depths, a small CNN and a one-block
# char transformer on the embedded Python-stdlib text. Fraction-of-training features and
# horizons 100-2000. No task, width or seed here is a `dev` or `full` suite cell
# (tests/eval/test_protocol.py); it validates on a wider MLP that neither suite runs.
PRESETS["compact-cpu"] = MetaTrainConfig(
    tasks=("mlp-fmnist8-w32-d3", "mlp-fmnist8-w64-d6", "mlp-fmnist8-w128-d2",
           "cnn-fmnist8-c8-d2", "lm-stdlib-d32-l1"),
    lo=dataclasses.replace(COMPACT, time_features="fraction", tau_clamp=500,
                           schedule="cosine", magnitude=True, exp_mult=1.0),
    es=_pes(unroll=20, horizons=(100, 2000), pairs=4),
    outer_steps=1000, warmup_steps=50, meta_lr=1e-3, final_lr=3e-4,
    checkpoint_every=25, keep_checkpoints=3, validate_every=100,
    validate_task="mlp-fmnist8-w256-d3", validate_steps=1000, init_from="adam")
# The same recipe on its three MLP tasks only, with 7 antithetic pairs per task (21 per outer
# step against compact-cpu's 20). On `dev` it beats compact-cpu on 5 of 7 cells, the two
# char LMs included, and loses the CNN (docs/compact-lo.md, "Task mix"); 13 min on one core.
PRESETS["compact-mlp-cpu"] = dataclasses.replace(
    PRESETS["compact-cpu"], tasks=PRESETS["compact-cpu"].tasks[:3],
    es=dataclasses.replace(PRESETS["compact-cpu"].es, num_pairs=7))


def sp_variant(config: MetaTrainConfig) -> MetaTrainConfig:
    """The same recipe for an SP learned optimizer on standard-parametrized tasks: the
    μLO paper's SP LO baseline (identical architecture, compute and task distribution)."""
    def sp(name):
        return name if (not name or name.endswith("-sp") or "-sp-" in name) else name + "-sp"
    lo = dataclasses.replace(config.lo, mup=False)
    if isinstance(lo, LOConfig) and lo.mup_base != 1.0:
        # a base width's step_mult compensates for μP's b/fan_in steps, which SP does not take
        lo = dataclasses.replace(lo, mup_base=1.0, depth_ref=0, step_mult=None)
    return dataclasses.replace(config, lo=lo,
                               tasks=tuple(sp(t) for t in config.tasks),
                               validate_task=sp(config.validate_task))


PRESETS.update({f"{k}-sp": sp_variant(v) for k, v in list(PRESETS.items())})


def parse_value(value: str, current: Any):
    """``value`` (command-line text) typed like ``current``, the field's present value: bools
    from 1/true/yes and 0/false/no only, tuples from comma lists, None-valued fields as
    "none" or a float, else ``type(current)(value)``. The one parser of option values
    (``--section.field``, ``eval.probe --set``).

    Raises:
      ValueError: a value that is not of that type (e.g. "ture" for a bool).
    """
    if isinstance(current, bool):
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"expected true/false, got {value!r}")
    if isinstance(current, tuple):
        return tuple(v for v in value.split(",") if v)
    if current is None:
        return None if value.lower() == "none" else float(value)
    return type(current)(value)


def override(config: MetaTrainConfig, key: str, value: str) -> MetaTrainConfig:
    """Returns config with dotted field ``key`` (e.g. ``es.sigma``) set from a string."""
    return apply_overrides(config, [(key, value)])


def apply_overrides(config: MetaTrainConfig, pairs) -> MetaTrainConfig:
    """Returns config with every ``(dotted key, string value)`` of ``pairs`` set, validated once
    at the end (so ``--es.min_horizon 2000 --es.max_horizon 4000`` works in either order).

    Raises:
      ValueError: unknown field, unparsable value, or a value the config refuses (one line
        naming the dotted field).
    """
    d = config.to_dict()
    for key, value in pairs:
        parts, obj, node = key.split("."), config, d
        for i, part in enumerate(parts):
            if not dataclasses.is_dataclass(obj):
                raise ValueError(f"option {'.'.join(parts[:i])!r} has no field {part!r}")
            fields = {f.name for f in dataclasses.fields(obj)}
            if part not in fields:
                raise ValueError(f"unknown option {key!r}; valid: {sorted(fields)}")
            obj = getattr(obj, part)
            if i < len(parts) - 1:
                node = node[part]
        if dataclasses.is_dataclass(obj):
            raise ValueError(f"option {key!r} is a group; set one of its fields "
                             f"({key}.{dataclasses.fields(obj)[0].name}, ...)")
        try:
            node[parts[-1]] = parse_value(value, obj)
        except ValueError as e:
            raise ValueError(f"bad value for {key}: {e}") from None
    return MetaTrainConfig.from_dict(d)


def fill_absent(doc: Mapping[str, Any], cls, nested: Mapping[str, Callable] | None = None
                ) -> dict:
    """``doc``, the stored fields of dataclass ``cls`` as some version wrote them, with every
    field it lacks at the field's default: a setting a run or result predates counts at its
    off value, which is how it behaved (each field added since the first release defaults to
    the old behaviour). Nested dataclass fields present as dicts are filled the same way, by
    the class of their default or ``nested[name](value)``; values come as JSON would give
    them (tuples as lists). The one rule that ``eval.merge`` (suite settings) and a resumed
    meta-training run (its saved config) apply."""
    nested = nested or {}
    out = dict(doc)
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            continue
        if f.name not in out:
            out[f.name] = json.loads(json.dumps(
                dataclasses.asdict(default) if dataclasses.is_dataclass(default) else default))
        elif isinstance(out[f.name], Mapping) and (f.name in nested
                                                   or dataclasses.is_dataclass(default)):
            sub = nested[f.name](out[f.name]) if f.name in nested else type(default)
            out[f.name] = fill_absent(out[f.name], sub)
    return out


def _lo_class(d: Mapping[str, Any]):
    return VeLOConfig if d.get("arch", "mlp") == "velo" else LOConfig


def fill_config(saved: Mapping[str, Any]) -> dict:
    """A saved meta-training config (``config.json``) with the fields it predates at their
    off values (:func:`fill_absent`)."""
    return fill_absent(saved, MetaTrainConfig, {"lo": _lo_class})


def config_diff(saved: dict, requested: dict, _prefix: str = "") -> list[str]:
    """``["es.num_pairs: 2 in the run, 4 requested", ...]`` for two ``to_dict()`` results
    (fill a saved one first: :func:`fill_config`)."""
    out = []
    for k in sorted(set(saved) | set(requested)):
        a, b = saved.get(k, "(absent)"), requested.get(k, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, _prefix + k + ".")
        elif a != b:
            out.append(f"{_prefix + k}: {a!r} in the run, {b!r} requested")
    return out


def field_help() -> list[tuple[str, str, Any]]:
    """(dotted name, type name, default) for every overridable field."""
    out = []

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                walk(v, prefix + f.name + ".")
            else:
                out.append((prefix + f.name, type(v).__name__, v))
    walk(MetaTrainConfig(), "")
    return out
