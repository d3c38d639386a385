"""Antithetic truncated ES and PES gradient estimators over a population of inner runs.

Pure jitted core: :func:`init_es_state` and :func:`es_gradient` are functions of
``(theta, state, key)``; the outer loop (``meta_train.loop``) owns logging and checkpoints.

Each of ``num_pairs`` pairs holds a positive and a negative particle. Every truncation:

* ``eps_i ~ N(0, sigma^2 I)``; the particles unroll ``K`` inner steps with
  ``theta + eps_i`` / ``theta - eps_i``; per-step meta-losses are normalized, clipped at a
  ceiling and NaN/inf-replaced by it, so diverging runs push the estimate the right way.
* Inner runs restart when they reach their horizon (log-uniform in ``[h_min, h_max]``);
  with ``stagger`` (the default) a pair's first run is cut to a length drawn uniformly from
  ``[min(K, h_min), horizon]`` so the population does not reset in lock-step. When a particle's loss goes non-finite, its pair restarts jointly at the next
  step (the two particles of a pair always stand at the same step of the same run).
* **Truncated ES**: ``g = mean_i (L+_i - L-_i) eps_i / (2 sigma^2)``; both particles start
  every truncation from the same inner state (the positive particle's).
* **PES**: ``g = mean_i (A_i xi_i + B_i eps_i) / (2 sigma^2)``, where ``A_i`` / ``B_i`` are the
  loss differences before / after an inner reset inside the truncation and ``xi_i`` is the
  running sum of the pair's perturbations since its run started (``xi = eps`` after a reset).
  Positive and negative particles keep separate inner states.

The pair axis is sharded over ``jax.devices()`` with ``jax.sharding`` (one code path for 1
device, n devices, and multi-host after ``jax.distributed.initialize()``). The inner steps
run under ``shard_map``: each device unrolls its own pairs with no collective between steps;
the estimate is averaged across devices once per truncation.

References: Vicol et al., PES, arXiv 2112.13835; Metz et al., arXiv 2203.11860 (truncated
ES in learned_optimization); Thérien et al., μLO, arXiv 2406.00153 (recipe).
"""

from __future__ import annotations

import dataclasses
import math
from functools import cache, partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from meta_train.inner import all_finite, inner_step


class InnerProblem(NamedTuple):
    """What the estimators need from an inner problem.

    init_run(theta, key) -> core: a fresh inner run (e.g. (params, opt_state)).
    step(theta, core, data, key, t, horizon) -> (core, loss): one inner update at step ``t``
      of a run of ``horizon`` steps; ``loss`` is the normalized meta-loss of that step
      (before clipping).

    Both are static (hashable); the data pytree is passed to :func:`es_gradient` as an
    argument so large arrays never become compiled constants.
    """
    init_run: Callable
    step: Callable


@dataclasses.dataclass(frozen=True)
class ESConfig:
    """Estimator settings.

    Attributes:
      method: "pes" or "tes" (antithetic truncated ES).
      num_pairs: antithetic pairs per estimator (the population is 2x this).
      sigma: perturbation standard deviation.
      unroll_length: K, inner steps per truncation.
      min_horizon, max_horizon: inner-run horizons are log-uniform in this range.
      loss_clip: ceiling of the normalized per-step meta-loss (1.5 x the ~1.0 at init).
      stagger: cut each particle's first inner run short at random (desynchronizes resets).
      loss_weight: how the per-step meta-losses of a run are weighted. "uniform": the mean
        loss over training (the classic μLO objective). "linear": step ``t`` of a run of
        ``T`` steps weighs ``2 (t + 1) / T`` (mean ~1), so the end of training, where the
        final loss is decided, counts most.
    """
    method: str = "pes"
    num_pairs: int = 8
    sigma: float = 0.01
    unroll_length: int = 50
    min_horizon: int = 100
    max_horizon: int = 1000
    loss_clip: float = 1.5
    stagger: bool = True
    loss_weight: str = "uniform"

    def __post_init__(self):
        """Raises ValueError (one line, naming the field) on a value the estimators cannot
        use: they would otherwise run silently wrong (an unknown method ran truncated ES,
        sigma = 0 gave NaN estimates, num_pairs = 0 a NaN meta-loss)."""
        check_fields(self)
        for name, lo in (("num_pairs", 1), ("unroll_length", 1), ("min_horizon", 1)):
            if getattr(self, name) < lo:
                raise ValueError(f"{name} must be >= {lo}, got {getattr(self, name)}")
        if self.method not in ("pes", "tes"):
            raise ValueError(f"method must be 'pes' or 'tes', got {self.method!r}")
        if self.loss_weight not in ("uniform", "linear"):
            raise ValueError(f"loss_weight must be 'uniform' or 'linear', got {self.loss_weight!r}")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma must be a finite number > 0, got {self.sigma}")
        if not (math.isfinite(self.loss_clip) and self.loss_clip > 0):
            raise ValueError(f"loss_clip must be a finite number > 0, got {self.loss_clip}")
        if self.max_horizon < self.min_horizon:
            raise ValueError(f"max_horizon ({self.max_horizon}) must be >= min_horizon "
                             f"({self.min_horizon})")


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def check_fields(cfg) -> None:
    """Raises ValueError naming the first field of dataclass ``cfg`` whose value does not have
    its annotated type (``int``, ``float``, ``bool``, ``str``; ``bool`` is no number here), so a
    config read from JSON with ``"num_pairs": "8"`` fails where it is read."""
    for f in dataclasses.fields(cfg):
        want = _TYPES.get(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""))
        v = getattr(cfg, f.name)
        if want and (not isinstance(v, want) or (isinstance(v, bool) and bool not in want)):
            raise ValueError(f"{f.name} must be of type {f.type}, got {v!r}")


class RunState(NamedTuple):
    """One particle's inner run (leading axis: pairs)."""
    core: Any           # inner problem state (params, optimizer state)
    t: jax.Array        # [P] int32: steps taken in this run
    horizon: jax.Array  # [P] int32: length of this run
    key: jax.Array      # [P] key: this run's key (init and data)


class ESState(NamedTuple):
    pos: RunState
    neg: RunState       # PES only; mirrors pos for truncated ES
    xi: jax.Array       # [P, D] accumulated perturbations since each run started (PES)


def _sample_horizon(key, cfg: ESConfig):
    lo, hi = math.log(cfg.min_horizon), math.log(cfg.max_horizon)
    return jnp.round(jnp.exp(jax.random.uniform(key, (), minval=lo, maxval=hi))).astype(jnp.int32)


def _fresh_run(problem: InnerProblem, theta, key, cfg: ESConfig, first: bool):
    k_run, k_h, k_off = jax.random.split(key, 3)
    h = _sample_horizon(k_h, cfg)
    if first and cfg.stagger:  # desynchronize the population: the first run is cut short at random
        h = jax.random.randint(k_off, (), min(cfg.unroll_length, cfg.min_horizon), h + 1)
    return RunState(problem.init_run(theta, k_run), jnp.int32(0), h, k_run)


def mesh() -> Mesh:
    """A 1-D mesh over every device (all hosts): the population axis."""
    return Mesh(np.asarray(jax.devices()), ("pop",))


def replicated(tree):
    """``tree`` placed whole on every device of :func:`mesh`, the placement
    :func:`es_gradient`'s estimate and so every updated theta has. Theta and the meta-optimizer
    state go through this before each step, so the step's programs compile once per run, not
    once for the first step's unplaced theta and again for the placed ones after it."""
    return _replicate(mesh())(tree)


@cache
def _replicate(m: Mesh):
    return jax.jit(lambda t: t, out_shardings=NamedSharding(m, PartitionSpec()))


def _shard(tree, m: Mesh):
    def put(x):
        spec = PartitionSpec("pop", *([None] * (x.ndim - 1)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(m, spec))
    return jax.tree.map(put, tree)


def init_es_state(problem: InnerProblem, theta, key, cfg: ESConfig) -> ESState:
    """Fresh population. Not jitted by the caller: it builds its own sharded jit."""
    flat, _ = ravel_pytree(theta)
    m = mesh()
    if cfg.num_pairs % len(m.devices.ravel()):
        raise ValueError(f"num_pairs={cfg.num_pairs} must be a multiple of the device count "
                         f"{m.devices.size}")

    @jax.jit
    def build(theta, key):
        keys = jax.random.split(key, cfg.num_pairs)
        runs = jax.vmap(lambda k: _fresh_run(problem, theta, k, cfg, True))(keys)
        xi = jnp.zeros((cfg.num_pairs, flat.size), flat.dtype)
        return _shard(ESState(runs, runs, xi), m)

    return build(theta, key)


def _unroll(problem: InnerProblem, thetas, runs: RunState, data, cfg: ESConfig):
    """K inner steps of a population of antithetic pairs.

    ``thetas`` and ``runs`` have a leading axis ``2P``: rows ``i`` and ``P + i`` are the
    positive and negative particle of pair ``i``. A pair restarts jointly: when either
    particle's loss or state goes non-finite, both end their run and start fresh at the
    next step, so the two particles always stand at the same step of runs of the same
    horizon and their loss difference measures the perturbation only.

    Returns (runs, clipped losses [2P, K], reset flags [2P, K]).
    """
    fresh = jax.vmap(lambda th, k: _fresh_run(problem, th, jax.random.fold_in(k, 1), cfg,
                                              False))
    num_pairs = runs.t.shape[0] // 2

    def step_one(theta, run):
        k_step = jax.random.fold_in(run.key, run.t + 2)
        core, loss = problem.step(theta, run.core, data, k_step, run.t, run.horizon)
        finite = jnp.isfinite(loss) & all_finite(core)
        loss = jnp.where(jnp.isfinite(loss), jnp.minimum(loss, cfg.loss_clip), cfg.loss_clip)
        if cfg.loss_weight == "linear":
            loss = loss * (2.0 * (run.t + 1) / jnp.maximum(run.horizon, 1))
        return core, loss, finite

    def body(runs, _):
        dead = runs.t >= runs.horizon
        # A reset is due about once per horizon per particle, so fresh runs (task init) are
        # built only on the steps where one is due: a population-level cond, which a
        # per-particle cond under vmap would turn into an always-computed select.
        new = jax.lax.cond(jnp.any(dead), lambda: fresh(thetas, runs.key), lambda: runs)
        runs = jax.tree.map(
            lambda a, b: jnp.where(dead.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, runs)
        core, loss, finite = jax.vmap(step_one)(thetas, runs)
        pair_ok = finite[:num_pairs] & finite[num_pairs:]
        ok = jnp.concatenate([pair_ok, pair_ok])
        # A pair with a non-finite particle keeps its last finite state and restarts at the
        # next step (t := horizon); this step that particle's loss is the ceiling, and the
        # particle that stayed finite keeps its own loss.
        core = jax.tree.map(lambda a, b: jnp.where(ok.reshape((-1,) + (1,) * (a.ndim - 1)),
                                                   a, b), core, runs.core)
        t = jnp.where(ok, runs.t + 1, runs.horizon)
        return RunState(core, t, runs.horizon, runs.key), (loss, dead)

    runs, (loss, dead) = jax.lax.scan(body, runs, None, length=cfg.unroll_length)
    return runs, (loss.T, dead.T)


def _unroll_pairs(problem: InnerProblem, th_pos, th_neg, runs_pos: RunState,
                  runs_neg: RunState, data, cfg: ESConfig, m: Mesh):
    """:func:`_unroll` on every device's own pairs (``shard_map`` over the pair axis): a
    pair's two particles sit on one device, so the joint restart and the reset test of each
    inner step read only that device's particles, and no inner step waits for a collective
    across devices or processes. Returns (pos runs, neg runs, pos losses [P, K], neg losses,
    reset flags [P, K])."""
    def local(th_pos, th_neg, runs_pos, runs_neg, data):
        p = runs_pos.t.shape[0]
        runs, (losses, resets) = _unroll(problem, _cat(th_pos, th_neg),
                                         _cat(runs_pos, runs_neg), data, cfg)
        return (_half(runs, 0, p), _half(runs, 1, p), losses[:p], losses[p:],
                resets[:p])                                   # resets are joint per pair
    pop, rep = PartitionSpec("pop"), PartitionSpec()
    return jax.shard_map(local, mesh=m, in_specs=(pop, pop, pop, pop, rep),
                         out_specs=pop, check_vma=False)(th_pos, th_neg, runs_pos, runs_neg,
                                                          data)


def _cat(a, b):
    return jax.tree.map(lambda x, y: jnp.concatenate([x, y]), a, b)


def _half(tree, i, n):
    return jax.tree.map(lambda x: x[i * n:(i + 1) * n], tree)


@partial(jax.jit, static_argnames=("problem", "cfg"))
def es_gradient(theta, state: ESState, key, data, *, problem: InnerProblem, cfg: ESConfig):
    """One truncation of the population: the ES/PES estimate of d(meta-loss)/d(theta).

    Args:
      theta: meta-parameters (pytree).
      state: population state from :func:`init_es_state` or a previous call.
      key: PRNG key for this truncation's perturbations.
      data: the inner problem's data pytree.
      problem: the inner problem (static).
      cfg: estimator settings (static).

    Returns:
      (grad: pytree like theta, new state, metrics dict of scalars).
    """
    flat, unravel = ravel_pytree(theta)
    m = mesh()
    n = cfg.num_pairs
    eps = cfg.sigma * jax.random.normal(key, (n, flat.size), flat.dtype)
    eps = _shard(eps, m)

    th_pos = jax.vmap(lambda e: unravel(flat + e))(eps)
    th_neg = jax.vmap(lambda e: unravel(flat - e))(eps)
    start_neg = state.neg if cfg.method == "pes" else state.pos
    pos, neg, lp, ln, reset = _unroll_pairs(problem, th_pos, th_neg, state.pos, start_neg,
                                            data, cfg, m)

    def pair(eps_i, lp, ln, reset, xi_i):
        diff = lp - ln
        before = jnp.cumsum(reset) == 0           # steps of the run that was going already
        a = jnp.mean(jnp.where(before, diff, 0.0))
        b = jnp.mean(jnp.where(before, 0.0, diff))
        if cfg.method == "pes":
            g = (a * (xi_i + eps_i) + b * eps_i) / (2 * cfg.sigma ** 2)
            xi_new = jnp.where(jnp.any(reset), eps_i, xi_i + eps_i)
        else:
            g = (a + b) * eps_i / (2 * cfg.sigma ** 2)
            xi_new = xi_i
        return g, xi_new, 0.5 * (jnp.mean(lp) + jnp.mean(ln)), jnp.sum(reset)

    g, xi, loss, nresets = jax.vmap(pair)(eps, lp, ln, reset, state.xi)
    if cfg.method != "pes":
        neg = pos
    grad = jnp.mean(g, 0)
    new_state = _shard(ESState(pos, neg, xi), m)
    metrics = {"meta_loss": jnp.mean(loss), "grad_norm": jnp.linalg.norm(grad),
               "resets": jnp.sum(nresets).astype(jnp.float32),
               "mean_inner_step": jnp.mean(pos.t.astype(jnp.float32))}
    return unravel(grad), new_state, metrics


def lo_problem(task, make_opt: Callable[[Any], Any]) -> InnerProblem:
    """The inner problem "train ``task`` with the learned optimizer ``make_opt(theta)``".

    Per-step meta-loss: the training-batch loss before the update, divided by the task's
    normalizer (log(num_classes)).
    """
    def init_run(theta, key):
        params = task.init(key)
        return params, make_opt(theta).init(params)

    def step(theta, core, data, key, t, horizon):
        del t
        params, opt_state = core
        batch = task.sample(data, key, "train")
        # The run's horizon is its total step count, for LOs that are told it; the loss
        # goes along for LOs whose features read it (VeLO; the MLP LO ignores it).
        loss, params, opt_state = inner_step(task, make_opt(theta), params, opt_state, batch,
                                             pass_loss=True, num_steps=horizon)
        return (params, opt_state), loss / task.normalizer

    return InnerProblem(init_run, step)
