"""Hand-designed baselines as optax transformations, each taking the μP role tree.

A registry ``BASELINES``: name -> :class:`Baseline` (factory ``make(lr, roles)``, default
log LR grid for tuning, one-line description with its reference). Built from optax blocks;
the norm-based ones add a duality map from :mod:`lopt.baselines.dualize` between momentum and step.
``Baseline.build(lr, roles, num_steps=T, schedule="cosine")`` runs any of them with linear
warmup and cosine decay (:func:`warmup_cosine`); ``adamw-cosine`` always does.

References: Bernstein & Newhouse, "Old Optimizer, New Norm: An Anthology", arXiv 2409.20325.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.baselines import dualize
from lopt.baselines.riemannian import riemannian_lowrank
from lopt.baselines.schatten import adaptive_schatten
from lopt.mup.roles import fan_in_axes, lr_multipliers, path_str, readout_multipliers, resolve_roles

SCHEDULES = ("constant", "cosine")
# warmup_cosine's shape: linear warmup over this fraction of the run, then cosine decay to
# this fraction of the peak (the common LLM recipe, e.g. Hoffmann et al., arXiv 2203.15556)
WARMUP_FRACTION = 0.05
FINAL_FRACTION = 0.1


def warmup_cosine(lr: float | jax.Array, num_steps: int) -> optax.Schedule:
    """LR ``lr`` with linear warmup from 0 over the first 5% of ``num_steps`` (at least one
    step) and cosine decay to ``0.1 * lr`` at ``num_steps``; constant after that.

    Composes ``optax.warmup_cosine_decay_schedule`` with a unit peak times ``lr``, so ``lr``
    may be a traced value (the suite vmaps over its LR grid).
    """
    if int(num_steps) < 2:
        raise ValueError(f"a warmup-cosine schedule needs num_steps >= 2, got {num_steps}")
    unit = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=1.0,
        warmup_steps=max(1, int(round(WARMUP_FRACTION * num_steps))),
        decay_steps=int(num_steps), end_value=FINAL_FRACTION)
    return lambda count: lr * unit(count)


@dataclasses.dataclass(frozen=True)
class Baseline:
    # (lr, roles) -> optimizer, at a constant LR; ``build`` adds the schedule. With
    # ``takes_schedule`` the factory also accepts an optax schedule as ``lr``.
    make: Callable[[Any, Any], optax.GradientTransformation]
    lr_grid: tuple[float, ...]
    description: str
    # update() wants extra_args ``activations`` (layer inputs, see Task.activations)
    needs_activations: bool = False
    # which parametrization of a task it is run on in the eval suite ("mup" or "sp")
    parametrization: str = "mup"
    # each step computes a matrix function (Newton-Schulz, SVD, eigendecomposition) per weight:
    # cost ~ width^3, 10-20x an elementwise update at width 1024 on CPU
    matrix_functions: bool = False
    # the LR schedule this entry runs with unless ``build`` is told otherwise
    schedule: str = "constant"
    # ``make`` accepts an optax schedule as ``lr``; if not, ``build`` multiplies its updates by
    # the unit schedule (the same thing for updates linear in the LR)
    takes_schedule: bool = True
    # ``make`` steps only some leaves itself and runs AdamW on the rest at ``adam_lr``: the
    # eval suite passes the LR this baseline tuned on the same cell, so the two rows differ
    # only in how those leaves are optimized
    adam_lr_from: str | None = None

    def build(self, lr: float | jax.Array, roles: Any, *, num_steps: int | None = None,
              schedule: str | None = None,
              adam_lr: float | None = None) -> optax.GradientTransformation:
        """The optimizer at (peak) LR ``lr``.

        Args:
          lr: the LR, or the peak LR of a schedule.
          roles: the μP role tree of the parameters.
          num_steps: the run's total step count; required by the cosine schedule.
          schedule: "constant" or "cosine" (:func:`warmup_cosine`); None: the entry's own.
          adam_lr: for entries with ``adam_lr_from``: the AdamW LR of the leaves ``make``
            does not step itself (None: the factory's default).

        Returns:
          An ``optax.GradientTransformation``.
        """
        make = self.make
        if adam_lr is not None:
            if self.adam_lr_from is None:
                raise ValueError("adam_lr applies only to baselines that run AdamW on part of "
                                 "the parameters (adam_lr_from set)")
            make = functools.partial(self.make, adam_lr=adam_lr)
        schedule = schedule or self.schedule
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
        if schedule == "constant":
            return make(lr, roles)
        if num_steps is None:
            raise ValueError("the cosine schedule needs num_steps, the run's total step count")
        if self.takes_schedule:
            return make(warmup_cosine(lr, num_steps), roles)
        return optax.chain(make(lr, roles),
                           optax.scale_by_schedule(warmup_cosine(1.0, num_steps)))


def _log_grid(lo, hi, per_decade=2):
    n = int(round(np.log10(hi / lo) * per_decade)) + 1
    return tuple(float(f"{x:.3g}") for x in np.logspace(np.log10(lo), np.log10(hi), n))


def adamw(lr: optax.ScalarOrSchedule, roles: Any = None, weight_decay: float = 0.0):
    """optax.adamw (Loshchilov & Hutter, arXiv 1711.05101)."""
    del roles
    return optax.adamw(lr, weight_decay=weight_decay)


def muadam(lr: optax.ScalarOrSchedule, roles: Any, base: float = 1.0):
    """Adam with μP per-role LR multipliers: hidden weights 1/fan_in, others 1
    (Yang et al., Tensor Programs V, arXiv 2203.03466, Table 3), for models that carry the
    readout's 1/fan_in. ``base``: μP base width b (hidden b/fan_in, readout LR x b, which for
    Adam equals a b/fan_in readout multiplier); 1 = absolute 1/fan_in."""
    def per_role(updates, params=None):
        del params   # the multipliers are the μLO's own (lopt.mup.roles), from the update's shapes
        role_tree = resolve_roles(updates, roles)
        mults = lr_multipliers(updates, role_tree, base=base)
        outs = readout_multipliers(updates, role_tree, base=base, in_model=True)
        return jax.tree.map(lambda u, m, o: u * (m * o), updates, mults, outs)

    return optax.chain(optax.scale_by_adam(), optax.stateless(per_role),
                       optax.scale_by_learning_rate(lr))


def sgdm(lr: optax.ScalarOrSchedule, roles: Any = None):
    """SGD with heavy-ball momentum 0.9."""
    del roles
    return optax.sgd(lr, momentum=0.9)


def signum(lr: optax.ScalarOrSchedule, roles: Any = None):
    """Sign descent with momentum 0.9 (Bernstein et al., arXiv 1802.04434)."""
    del roles
    return optax.signum(lr, beta=0.9)


def muon(lr: optax.ScalarOrSchedule, roles: Any, adam_lr: float | None = None):
    """Muon (Jordan et al.) via optax.contrib.muon on hidden matrices only; input, readout and
    non-matrix leaves go to AdamW with LR ``adam_lr`` (default lr / 10, following ``lr``'s
    schedule)."""
    def dims(params):
        # the one matrix view (lopt.mup.roles.fan_in_axes): a q/k/v kernel [d, heads, head_dim]
        # is one [d, heads * head_dim] matrix, a conv kernel [h, w, in, out] one [h w in, out]
        def one(path, role, p):
            # optax passes masked trees: leaves it does not route to Muon are MaskedNode
            if role != "hidden" or not hasattr(p, "shape") or len(p.shape) < 2:
                return None
            k = fan_in_axes(path_str(path), p.shape)
            return optax.contrib.MuonDimensionNumbers(
                reduction_axis=tuple(range(k)), output_axis=tuple(range(k, len(p.shape))))
        return jax.tree_util.tree_map_with_path(one, roles, params)
    if not adam_lr:
        adam_lr = (lambda count: lr(count) / 10) if callable(lr) else lr / 10
    return optax.contrib.muon(lr, adam_learning_rate=adam_lr,
                              muon_weight_dimension_numbers=dims, nesterov=True, beta=0.95)


def map_leaves(fn: Callable[[jax.Array, str, int], jax.Array], roles: Any):
    """A stateless transformation applying ``fn(update, role, split)`` leaf by leaf; ``split``
    is the leaf's number of fan-in axes (:func:`lopt.mup.roles.fan_in_axes`, from its path)."""
    def update_fn(updates, state, params=None):
        del params
        split = lambda path, u: fan_in_axes(path_str(path), np.shape(u))
        if roles is None:
            return jax.tree_util.tree_map_with_path(
                lambda p, u: fn(u, None, split(p, u)), updates), state
        return jax.tree_util.tree_map_with_path(
            lambda p, u, r: fn(u, r, split(p, u)), updates, roles), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def spectral(lr: optax.ScalarOrSchedule, roles: Any = None, momentum: float = 0.9,
             svd_max: int = 1024):
    """Spectral descent = Shampoo with accumulation off: every matrix steps along ``U V^T`` of
    its momentum (exact SVD when min(fan_in, fan_out) <= svd_max, else Muon's Newton-Schulz);
    vectors and scalars take sign steps (Adam with EMAs off). arXiv 2409.20325, sec. 3."""
    def direction(u, role, split):
        del role
        if u.ndim < 2:
            return jnp.sign(u)
        m = dualize.as_matrix(u, split)
        return dualize.orthogonalize(u, "svd" if min(m.shape) <= svd_max else "newton-schulz",
                                     split=split)
    return optax.chain(optax.trace(momentum), map_leaves(direction, roles),
                       optax.scale_by_learning_rate(lr))


def prodigy(lr: optax.ScalarOrSchedule, roles: Any = None):
    """Prodigy (optax.contrib): Adam with an estimated step size; ``lr`` multiplies the
    estimate (1 is the default). Under a schedule it runs with ``safeguard_warmup`` (the LR
    leaves the D estimate's denominator), as the paper advises for warmup: a warmup from LR 0
    makes that estimate 0/0. Mishchenko & Defazio, arXiv 2306.06101."""
    del roles
    opt = optax.contrib.prodigy(learning_rate=lr, safeguard_warmup=callable(lr))

    def update_fn(updates, state, params=None, **extra):
        # prodigy promotes bf16 updates and its scalar state to f32; cast back so params and
        # state keep their dtypes (and jit does not recompile on the second step)
        upd, new = opt.update(updates, state, params, **extra)
        new = jax.tree.map(lambda n, o: n.astype(o.dtype), new, state)
        return jax.tree.map(lambda u, g: u.astype(g.dtype), upd, updates), new

    def init_fn(params):
        # its scalar step-size state takes the first leaf's dtype; keep it in f32
        state = opt.init(params)
        return state._replace(estim_lr=state.estim_lr.astype(jnp.float32),
                              numerator_weighted=state.numerator_weighted.astype(jnp.float32))
    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def modular(lr: optax.ScalarOrSchedule, roles: Any, momentum: float = 0.9, readout: str = "row",
            ortho: str = "newton-schulz", constrained: bool = False):
    """Modular-norm steepest descent: per-role duality maps of the momentum.

    hidden: ``sqrt(fan_out/fan_in) U V^T`` (spectral norm sqrt(fan_out/fan_in)); input and
    embedding: each input feature's row to unit RMS; readout: each output column to RMS
    1/fan_in (``readout="sign"``: sign/fan_in); vectors: unit RMS. ``constrained=True`` adds
    ``-lr * W`` (Scion's constrained form: the weights stay in a norm ball).
    References: modula (Large et al., arXiv 2405.14813); Scion, arXiv 2502.07529.
    """
    def direction(u, role, split):
        if u.ndim < 2 or role == "vector":
            return dualize.rms_normalize(u)
        if role == "input":
            return dualize.input_direction(u, split)
        if role == "output":
            return dualize.readout_direction(u, readout, split)
        m = dualize.as_matrix(u, split)
        return (m.shape[1] / m.shape[0]) ** 0.5 * dualize.orthogonalize(u, ortho, split=split)
    chain = [optax.trace(momentum), map_leaves(direction, roles)]
    if constrained:
        chain.append(optax.add_decayed_weights(1.0))
    return optax.chain(*chain, optax.scale_by_learning_rate(lr))


BASELINES: dict[str, Baseline] = {
    "adamw": Baseline(adamw, _log_grid(1e-4, 3e-2), "AdamW (optax), arXiv 1711.05101",
                      parametrization="sp"),
    "adamw-cosine": Baseline(adamw, _log_grid(3e-4, 3e-2),
                             "AdamW (optax) with linear warmup (5%) and cosine decay to 0.1x",
                             parametrization="sp", schedule="cosine"),
    "muadam": Baseline(muadam, _log_grid(1e-3, 3e-1),
                       "Adam with μP LR multipliers (hidden 1/fan_in), arXiv 2203.03466"),
    "sgdm": Baseline(sgdm, _log_grid(1e-3, 1.0), "SGD, momentum 0.9", parametrization="sp"),
    "signum": Baseline(signum, _log_grid(1e-5, 1e-2), "sign descent with momentum, "
                       "arXiv 1802.04434", parametrization="sp"),
    "muon": Baseline(muon, _log_grid(1e-3, 3e-1), "Muon (optax.contrib), hidden matrices; "
                     "AdamW elsewhere; arXiv 2409.20325", matrix_functions=True),
    "spectral": Baseline(spectral, _log_grid(1e-3, 3e-1), "spectral descent (Shampoo without "
                         "accumulation): U V^T of the momentum, arXiv 2409.20325",
                         matrix_functions=True),
    "prodigy": Baseline(prodigy, _log_grid(1e-1, 3.0), "Prodigy (optax.contrib), "
                        "arXiv 2306.06101", parametrization="sp"),
    "modular": Baseline(modular, _log_grid(1e-3, 3e-1), "modular-norm steepest descent, "
                        "per-role duality maps (modula/Scion), arXiv 2405.14813",
                        matrix_functions=True),
    "schatten": Baseline(adaptive_schatten, _log_grid(1e-3, 3e-1),
                         "adaptive Schatten-p descent, p per layer from gradient and input "
                         "activations, arXiv 2605.19781", needs_activations=True,
                         matrix_functions=True, takes_schedule=False),
    # run like AdamW (SP network, AdamW at the cell's tuned LR on every unfactored leaf), so
    # its row differs from AdamW's only in the factored weights' optimizer
    "riemannian": Baseline(riemannian_lowrank,
                           _log_grid(3e-2, 30.0),
                           "Riemannian fixed-rank descent on factored W = A B^T, AdamW "
                           "elsewhere, arXiv 2606.02328", matrix_functions=True,
                           # its LR enters the retraction; a schedule scales the factor steps
                           takes_schedule=False, parametrization="sp",
                           adam_lr_from="adamw"),
}
