"""The per-parameter MLP learned optimizer, μLO and SP variants, as an optax transformation.

Per tensor, the accumulators of :mod:`lopt.learned.features` feed one MLP shared by all
parameters (39 -> 32 -> 32 -> 2, ReLU) that outputs a direction ``d`` and magnitude ``a``;
``step = d * exp(a * exp_mult) * step_mult`` and ``p_new = p - lr_mult(p) * step``.

* SP LO: ``lr_mult = 1``, ``step_mult = 1e-3`` (learned_optimization default).
* μLO:   ``lr_mult = 1/fan_in`` for hidden weights, 1 otherwise; ``step_mult = 1e-2``.

Where μP lives (``mup_in``): μLO was meta-trained on models that multiply their readout
by ``1/fan_in`` in the forward pass. A plain model (Flax ``nn.Dense`` readout) has no such
multiplier; with ``mup_in="optimizer"`` (the default) the optimizer applies it instead, by
the abc-reparametrization of Tensor Programs V: it shows the LO the readout as the μP model
would hold it (``P = p * fan_in``, ``dL/dP = g / fan_in``) and maps the step back
(``dp = dP / fan_in``). On a plain model with the readout scaled by ``1/fan_in`` at init
(:func:`lopt.mup_init_params` zeroes it) this reproduces the μP model's trajectory
exactly. ``mup_in="model"`` is for models that carry the multiplier themselves (this
project's tasks).

Optional variants (``LOConfig``; the defaults are the classic μLO_M / AdafacMLPLOpt):

* ``time_features="fraction"`` adds VeLO's fraction-of-training features
  ``tanh(10 (t/T - c))`` at 9 offsets ``c``; ``tau_clamp`` holds the 11 classic time
  features at ``min(t, tau_clamp)`` so they stay in their meta-training range;
* ``schedule="cosine"`` multiplies the step by ``0.1 + 0.9 (1 + cos(pi t/T)) / 2``;
* ``horizon_ref`` / ``horizon_power`` multiply the step by ``(T_ref / max(T, T_ref))^a``:
  runs longer than ``T_ref`` take smaller steps, as the tuned LR of hand-designed optimizers
  falls with the training horizon (Bjorck et al., arXiv 2409.19913).

All three need the run's total step count ``T``: ``make(theta, num_steps=T)`` (like an optax
schedule's ``decay_steps``), or per call ``opt.update(g, s, p, num_steps=T)``.

References: Thérien et al., μLO, arXiv 2406.00153; Metz et al., small_fc_lopt,
arXiv 2203.11860.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, ClassVar, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.learned import compact as C
from lopt.learned import features as F
from lopt.learned.common import (INITIAL_ADAFACTOR_DECAYS, INITIAL_MOMENTUM_DECAYS,
                                 INITIAL_RMS_DECAYS, MUP_IN, NumStepsError, as_tensor,
                                 check_grad_shapes, check_theta_shapes)
from lopt.mup import roles as R

TIME_FEATURES = ("tau", "fraction")
SCHEDULES = ("none", "cosine")
FEATURE_SETS = ("adafac", "compact")


@dataclasses.dataclass(frozen=True)
class LOConfig:
    """Architecture and constants of a learned optimizer; stored next to every theta.

    Attributes:
      mup: μLO (True: hidden LR multiplier 1/fan_in) or SP LO (False).
      hidden_size: width of the per-parameter MLP.
      hidden_layers: number of hidden layers of the MLP.
      exp_mult: scale of the magnitude output inside ``exp``.
      step_mult: output scale; None means 1e-2 for μLO and 1e-3 for SP.
      time_features: "tau" (the 11 classic features) or "fraction" (those plus 9
        fraction-of-training features; needs the total step count).
      tau_clamp: > 0 holds the classic time features at ``min(t, tau_clamp)``.
      schedule: "none" or "cosine" (step x cosine decay 1 -> 0.1 over the run; needs the
        total step count).
      mup_base: μP base width ``b`` (Tensor Programs V's base shapes): hidden weights step
        ``b/fan_in`` and the readout acts as if its forward multiplier were ``b/fan_in``, so
        at width ``b`` every layer steps alike (as in SP) and width scaling is μP from there.
        1 is the classic μLO_M (absolute ``1/fan_in``). Ignored for SP.
      depth_ref: > 0 scales every hidden weight's step by ``min(1, depth_ref / L)``, ``L``
        the model's depth (``lopt.mup.roles.model_depth``: an MLP's hidden matrices, a
        transformer's residual blocks; a 1/depth rule: the summed change of the hidden
        layers stays bounded as depth grows). 0 (classic) = off. Ignored for SP.
      horizon_ref: > 0 scales the step of a run of ``T > horizon_ref`` total steps by
        ``(horizon_ref / T) ** horizon_power`` (needs the total step count); 0 = off.
      horizon_power: the exponent ``a`` of that rule (>= 0).
      features: "adafac" (the classic μLO: AdafacMLPLOpt's 28 tensor features) or
        "compact" (:mod:`lopt.learned.compact`: 8 features, 3 accumulators per element; with
        ``hidden_size=8`` about a fifteenth of the classic network's work per parameter).
      magnitude: the network also outputs a magnitude ``a`` (step x ``exp(a exp_mult)``);
        False: direction only (compact only).
      output_norm: the direction is scaled to root-mean-square 1 over each tensor before
        the step sizes apply (compact only).
      orthogonalize: hidden matrices step along the Newton-Schulz orthogonalization of the
        direction, scaled as Muon (compact μLO only;
        :func:`lopt.learned.compact.orthogonal_direction`).
    """
    mup: bool = True
    hidden_size: int = 32
    hidden_layers: int = 2
    exp_mult: float = 1e-3
    step_mult: float | None = None
    time_features: str = "tau"
    tau_clamp: int = 0
    schedule: str = "none"
    mup_base: float = 1.0
    depth_ref: int = 0
    horizon_ref: int = 0
    horizon_power: float = 0.0
    features: str = "adafac"
    magnitude: bool = True
    output_norm: bool = False
    orthogonalize: bool = False

    def __post_init__(self):
        # Types first: a checkpoint's JSON may say "mup": "false", which is truthy.
        # (numbers.Integral / Real also admit numpy scalars; bool only where asked for)
        integer, real = (numbers.Integral,), (numbers.Real,)
        kinds = {"mup": (bool,), "hidden_size": integer, "hidden_layers": integer,
                 "exp_mult": real, "step_mult": real + (type(None),),
                 "time_features": (str,), "tau_clamp": integer, "schedule": (str,),
                 "mup_base": real, "depth_ref": integer, "horizon_ref": integer,
                 "horizon_power": real, "features": (str,), "magnitude": (bool,),
                 "output_norm": (bool,), "orthogonalize": (bool,)}
        names = {bool: "bool", numbers.Integral: "an integer", numbers.Real: "a number",
                 str: "a string", type(None): "None"}
        for name, ok in kinds.items():
            v = getattr(self, name)
            if not isinstance(v, ok) or (isinstance(v, bool) and bool not in ok):
                raise ValueError(f"{name}={v!r}: must be {' or '.join(names[t] for t in ok)}")
        if self.time_features not in TIME_FEATURES:
            raise ValueError(f"time_features={self.time_features!r}: must be one of "
                             f"{TIME_FEATURES}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}: must be one of {SCHEDULES}")
        if not (math.isfinite(self.mup_base)
                and self.mup_base > 0):
            raise ValueError(f"mup_base={self.mup_base!r}: must be a finite number > 0")
        if self.depth_ref < 0:
            raise ValueError(f"depth_ref={self.depth_ref!r}: must be an integer >= 0")
        if self.horizon_ref < 0:
            raise ValueError(f"horizon_ref={self.horizon_ref!r}: must be an integer >= 0")
        if not (math.isfinite(self.horizon_power) and self.horizon_power >= 0):
            raise ValueError(f"horizon_power={self.horizon_power!r}: must be a finite number "
                             ">= 0")
        if self.hidden_size < 1 or self.hidden_layers < 1:
            raise ValueError("hidden_size and hidden_layers must be >= 1")
        if self.features not in FEATURE_SETS:
            raise ValueError(f"features={self.features!r}: must be one of {FEATURE_SETS}")
        if self.features != "compact" and (
                self.output_norm or self.orthogonalize or not self.magnitude):
            raise ValueError("output_norm, orthogonalize and magnitude=False need "
                             "features='compact'")
        if self.orthogonalize and not self.mup:
            raise ValueError("orthogonalize=True is defined for the μLO only (mup=True)")

    # the architecture family, as stored in checkpoints (lopt.learned.registry.ARCHS)
    arch: ClassVar[str] = "mlp"
    # whether ``update`` needs each step's training loss (``value=loss``); VeLO does
    needs_loss: ClassVar[bool] = False

    @property
    def needs_num_steps(self) -> bool:
        """Whether the optimizer must be told the run's total step count."""
        return (self.time_features == "fraction" or self.schedule != "none"
                or self.horizon_ref > 0)

    @property
    def num_inputs(self) -> int:
        if self.features == "compact":
            return F.num_inputs(self.time_features) - F.NUM_TENSOR_FEATURES + C.NUM_FEATURES
        return F.num_inputs(self.time_features)

    @property
    def resolved_step_mult(self) -> float:
        if self.step_mult is not None:
            return float(self.step_mult)
        return 1e-2 if self.mup else 1e-3

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["step_mult"] = self.resolved_step_mult
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LOConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown learned-optimizer config keys {sorted(unknown)}")
        return cls(**dict(d))


MULO = LOConfig(mup=True)
SP_LO = LOConfig(mup=False)
# The compact μLO (lopt.learned.compact): hidden 8, normalized direction, no magnitude head,
# μP relative to base width 512 with 1/depth hidden steps (the shipped μLOs' constants), and a
# step of root-mean-square 1e-3 at the base width: Adam's default learning rate, not tuned.
COMPACT = LOConfig(features="compact", hidden_size=8, output_norm=True, magnitude=False,
                   mup_base=512.0, depth_ref=2, step_mult=1e-3)


def decay_to_param(x):
    # learned_optimization's reparametrization keeping decays in (0, 1).
    return jnp.log(1 - x) / 10.0


def param_to_decay(x):
    return 1 - jnp.exp(x * 10.0)


def adam_theta(config: LOConfig) -> dict:
    """Hand-set meta-parameters of a compact learned optimizer whose direction is Adam's
    (:func:`lopt.learned.compact.adam_nn`): with ``output_norm`` it steps like μAdam normalized per
    tensor. A starting point for meta-training and the ablation's "no meta-training" row.

    Raises:
      ValueError: ``config`` is not a compact one.
    """
    if config.features != "compact":
        raise ValueError("adam_theta is defined for features='compact'")
    return {"momentum_decays": jnp.zeros((len(C.INITIAL_MOMENTUM_DECAYS),), jnp.float32),
            "rms_decays": jnp.zeros((len(C.INITIAL_RMS_DECAYS),), jnp.float32),
            "nn": C.adam_nn(config.num_inputs, config.hidden_size, config.hidden_layers,
                            2 if config.magnitude else 1)}


def init_theta(key: jax.Array, config: LOConfig = MULO) -> dict:
    """Random meta-parameters: MLP weights (truncated normal, std 1/sqrt(fan_in)), zero
    biases, and zero decay offsets (decays start at 0.9/0.99/0.999). (Any architecture's
    theta: :func:`lopt.learned.registry.init_theta`.)

    Args:
      key: PRNG key.
      config: architecture; hidden_size / hidden_layers / time_features matter here.

    Returns:
      theta: ``{"momentum_decays": [3], "rms_decays": [1], "adafactor_decays": [3],
      "nn": {"w0", "b0", ...}}``, all float32.
    """
    if config.features == "compact":
        return {"momentum_decays": jnp.zeros((len(C.INITIAL_MOMENTUM_DECAYS),), jnp.float32),
                "rms_decays": jnp.zeros((len(C.INITIAL_RMS_DECAYS),), jnp.float32),
                "nn": C.init_nn(key, config.num_inputs, config.hidden_size,
                                config.hidden_layers, 2 if config.magnitude else 1)}
    sizes = [config.num_inputs] + [config.hidden_size] * config.hidden_layers + [2]
    nn = {}
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        nn[f"w{i}"] = jax.random.truncated_normal(keys[i], -2.0, 2.0, (a, b)) / np.sqrt(a)
        nn[f"b{i}"] = jnp.zeros((b,), jnp.float32)
    return {
        "momentum_decays": jnp.zeros((len(INITIAL_MOMENTUM_DECAYS),), jnp.float32),
        "rms_decays": jnp.zeros((len(INITIAL_RMS_DECAYS),), jnp.float32),
        "adafactor_decays": jnp.zeros((len(INITIAL_ADAFACTOR_DECAYS),), jnp.float32),
        "nn": nn,
    }


def extend_theta(theta, source: LOConfig, target: LOConfig) -> dict:
    """Meta-parameters of ``source`` as a starting point for architecture ``target``.

    The MLP sizes must agree; inputs that ``target`` adds (the fraction-of-training
    features, which come last) get zero first-layer weights, so the extended optimizer
    computes exactly what the source did until meta-training moves them.

    Raises:
      ValueError: the hidden sizes differ, or ``target`` has fewer inputs.
    """
    if (source.features, source.magnitude) != (target.features, target.magnitude):
        raise ValueError(f"cannot start a features={target.features!r}, magnitude="
                         f"{target.magnitude} optimizer from a features={source.features!r}, "
                         f"magnitude={source.magnitude} one")
    if (source.hidden_size, source.hidden_layers) != (target.hidden_size, target.hidden_layers):
        raise ValueError(
            f"cannot start a hidden_size={target.hidden_size}, hidden_layers="
            f"{target.hidden_layers} optimizer from one with hidden_size={source.hidden_size}"
            f", hidden_layers={source.hidden_layers}")
    extra = target.num_inputs - source.num_inputs
    if extra < 0:
        raise ValueError(f"target has {target.num_inputs} inputs, fewer than the source's "
                         f"{source.num_inputs}")
    nn = dict(theta["nn"])
    w0 = jnp.asarray(nn["w0"], jnp.float32)
    nn["w0"] = jnp.concatenate([w0, jnp.zeros((extra, w0.shape[1]), jnp.float32)])
    out = {k: jnp.asarray(v, jnp.float32) for k, v in theta.items() if k != "nn"}
    out["nn"] = {k: jnp.asarray(v, jnp.float32) for k, v in nn.items()}
    return out


def decays(theta) -> dict:
    """The effective accumulator decays encoded by theta ({} for a VeLO theta, whose decays
    are fixed)."""
    if "momentum_decays" not in theta:
        return {}
    def one(init, off):
        return param_to_decay(decay_to_param(jnp.asarray(init, jnp.float32)) + off)
    if "adafactor_decays" not in theta:      # lopt.learned.compact
        return {"momentum": one(C.INITIAL_MOMENTUM_DECAYS, theta["momentum_decays"]),
                "rms": one(C.INITIAL_RMS_DECAYS, theta["rms_decays"])}
    return {"momentum": one(INITIAL_MOMENTUM_DECAYS, theta["momentum_decays"]),
            "rms": one(INITIAL_RMS_DECAYS, theta["rms_decays"]),
            "adafactor": one(INITIAL_ADAFACTOR_DECAYS, theta["adafactor_decays"])}


def check_theta(theta, config: LOConfig = MULO) -> None:
    """Raises one clear ValueError if theta does not fit the μLO architecture in config.
    (Any architecture's theta: :func:`lopt.learned.registry.check_theta`.)"""
    check_theta_shapes(theta, lambda: init_theta(jax.random.key(0), config),
                       f"learned-optimizer architecture (hidden_size={config.hidden_size}, "
                       f"hidden_layers={config.hidden_layers}, "
                       f"time_features={config.time_features!r}, "
                       f"features={config.features!r}, magnitude={config.magnitude})")


# Tensors above this many elements run the MLP in chunks of about this many elements: the
# [n, hidden] activations of a multi-million-element tensor then stay in cache instead of
# streaming through memory (the whole update of a 2048x2048 matrix runs 2-2.7x faster on
# one CPU core).
CHUNK_ELEMENTS = 4096


def _mlp_direction_magnitude(nn, elem, row, col, scale, time_in, shape):
    """Runs the shared MLP on one tensor's features (``elem``, ``row``, ``col``, ``scale``
    from :func:`lopt.learned.features.feature_parts`); returns (direction, magnitude) [S].

    ``time_in`` holds the features that are the same for every element (time features):
    they enter as one ``[k] x [k, H]`` product folded into the first bias. The factored
    row/column features enter as ``[rows, H]`` / ``[cols, H]`` products broadcast over the
    tensor. Large tensors are processed in slices along their first axis
    (:data:`CHUNK_ELEMENTS`); the result is the same per element.
    """
    w0 = nn["w0"]
    w0s = w0[:F.NUM_TENSOR_FEATURES] * scale[:, None]      # normalization folded into W0
    bias0 = time_in @ w0[F.NUM_TENSOR_FEATURES:] + nn["b0"]
    num_layers = len(nn) // 2
    w_elem = w0s[F.ELEM_ROWS]

    def rest(h):
        h = jax.nn.relu(h + bias0)
        for i in range(1, num_layers):
            h = h @ nn[f"w{i}"] + nn[f"b{i}"]
            if i < num_layers - 1:
                h = jax.nn.relu(h)
        return h[..., 0], h[..., 1]

    n = int(np.prod(shape))
    if col is not None:
        d1, d0 = F.factored_dims(shape)
        contrib = ((row @ w0s[F.ROW_ROWS], d0),    # S without d0, + (H,)
                   (col @ w0s[F.COL_ROWS], d1))    # S without d1, + (H,)
    if n <= 4 * CHUNK_ELEMENTS or len(shape) < 1:
        h = F.elem_features(elem) @ w_elem
        if col is None:
            h = h + row @ w0s[F.DIAG_ROWS]
        else:
            for x, d in contrib:
                h = h + jnp.expand_dims(x, d)
        return rest(h)

    # Slices along axis 0: every per-element array is sliced with the tensor; a row/column
    # contribution that lacks axis 0 (its missing axis is 0) is the same for every slice.
    sliced = {"e": elem, "r": row} if col is None else {"e": elem}   # elem: raw arrays
    if col is not None:
        for k, (x, d) in enumerate(contrib):
            if d != 0:
                sliced[f"c{k}"] = x

    def one_slice(s):
        h = F.elem_features(s["e"]) @ w_elem
        if col is None:
            return rest(h + s["r"] @ w0s[F.DIAG_ROWS])
        for k, (x, d) in enumerate(contrib):
            h = h + (x if d == 0 else jnp.expand_dims(s[f"c{k}"], d - 1))
        return rest(h)

    rows = max(1, CHUNK_ELEMENTS // max(int(np.prod(shape[1:])), 1))
    return jax.lax.map(one_slice, sliced, batch_size=rows)


class LOState(NamedTuple):
    """State of the learned optimizer."""
    acc: Any          # params-shaped tree of features.Accumulators (float32)
    count: jax.Array  # [] int32: number of updates taken


def _cosine(frac):
    # Cosine decay 1 -> 0.1 over the run (the decay floor of the scheduled baselines). Written
    # out rather than optax.cosine_decay_schedule because meta-training passes each run's
    # horizon as a traced value, which optax's constructor (it checks decay_steps > 0) refuses.
    return 0.1 + 0.45 * (1.0 + jnp.cos(jnp.pi * jnp.clip(frac, 0.0, 1.0)))


def horizon_factor(num_steps, horizon_ref: int, power: float):
    """``(horizon_ref / max(T, horizon_ref)) ** power``: 1 up to ``horizon_ref`` steps, then
    a power-law decay of the step size with the run's total step count ``T`` (traceable)."""
    t = jnp.maximum(jnp.asarray(num_steps, jnp.float32), float(horizon_ref))
    return (float(horizon_ref) / t) ** float(power)


def make(theta: Any, *, mup: bool | None = None, step_mult: float | None = None,
         exp_mult: float | None = None, roles: Any = None,
         role_overrides: Mapping[str, str] | None = None, mup_in: str = "optimizer",
         num_steps: int | None = None, config: LOConfig | None = None
         ) -> optax.GradientTransformationExtraArgs:
    """Turns meta-parameters into an optax optimizer.

    Args:
      theta: meta-parameters from :func:`init_theta`, a checkpoint, or meta-training.
      mup: μLO (hidden-weight LR multiplier 1/fan_in) or SP LO; None: ``config.mup``
        (True for the default config).
      step_mult: output scale; None: ``config.step_mult``, whose None means 1e-2 (μLO) /
        1e-3 (SP).
      exp_mult: magnitude scale inside ``exp``; None: ``config.exp_mult`` (1e-3).
      roles: optional role tree (see :func:`lopt.infer_roles`); inferred if None.
      role_overrides: ``{regex: role}`` patterns applied when inferring.
      mup_in: where the readout's μP multiplier ``1/fan_in`` lives: ``"optimizer"`` (plain
        models, e.g. Flax ``nn.Dense`` readouts; the default) or ``"model"`` (models that
        multiply their readout themselves, like this project's μP tasks). Ignored for SP.
      num_steps: total number of updates of the run, for variants that need it
        (``config.needs_num_steps``); ``update(..., num_steps=T)`` overrides it per call.
      config: the architecture variant (time features, schedule); default classic μLO_M.
        ``mup``, ``step_mult`` and ``exp_mult`` above, when given, take precedence over its
        fields.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` requires ``params``.

    Raises:
      ValueError: unknown ``mup_in``, or ``config`` is not an :class:`LOConfig`;
      NumStepsError (at the first update) when the variant needs ``num_steps`` and none was
      given.
    """
    if mup_in not in MUP_IN:
        raise ValueError(f"mup_in={mup_in!r}: must be 'optimizer' (plain models) or 'model' "
                         "(models with a 1/fan_in readout multiplier)")
    if config is not None and not isinstance(config, LOConfig):
        raise ValueError(f"make builds the μLO from an LOConfig, not a {type(config).__name__}: "
                         "use lopt.make_from_config(theta, config)")
    given = {"mup": mup, "step_mult": step_mult, "exp_mult": exp_mult}
    config = dataclasses.replace(config or MULO,
                                 **{k: v for k, v in given.items() if v is not None})
    check_theta(theta, config)   # one clear error now, not a shape error inside the first update
    sm = config.resolved_step_mult
    dec = decays(theta)
    if num_steps is not None and int(num_steps) < 1:
        raise NumStepsError(f"num_steps={num_steps}: must be >= 1")

    multipliers = R.step_multipliers(roles, role_overrides, mup=config.mup,
                                     base=config.mup_base, depth_ref=config.depth_ref,
                                     in_model=mup_in == "model")
    splits = _orthogonal_splits(roles, role_overrides, config.orthogonalize)
    compact = config.features == "compact"
    init_acc = C.init_accumulators if compact else F.init_accumulators

    def init_fn(params):
        multipliers(params)     # the roles now: the model's own params carry its creation order
        return LOState(acc=jax.tree.map(lambda p: init_acc(as_tensor(p)), params),
                       count=jnp.zeros([], jnp.int32))

    def time_inputs(count, total):
        t = count if config.tau_clamp <= 0 else jnp.minimum(count, config.tau_clamp)
        parts = [F.time_features(t)]
        if config.time_features == "fraction":
            parts.append(F.fraction_features(count, total))
        return jnp.concatenate(parts)

    def update_fn(updates, state, params=None, *, num_steps=num_steps, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("the learned optimizer needs the parameters: call "
                             "opt.update(grads, state, params)")
        if config.needs_num_steps and num_steps is None:
            raise NumStepsError(
                f"this learned optimizer (time_features={config.time_features!r}, "
                f"schedule={config.schedule!r}, horizon_ref={config.horizon_ref}) needs the "
                "run's total step count: "
                "lopt.load(..., num_steps=T) or lopt.make(..., num_steps=T)")
        check_grad_shapes(updates, params)
        mults, convs = multipliers(params)
        time_in = time_inputs(state.count, num_steps)
        sched = _cosine(state.count / num_steps) if config.schedule == "cosine" else 1.0
        if config.horizon_ref > 0:
            sched = sched * horizon_factor(num_steps, config.horizon_ref, config.horizon_power)
        p_leaves, treedef = jax.tree.flatten(params)
        g_leaves = treedef.flatten_up_to(updates)
        a_leaves = treedef.flatten_up_to(state.acc)
        m_leaves = treedef.flatten_up_to(mults)
        c_leaves = treedef.flatten_up_to(convs)
        s_leaves = treedef.flatten_up_to(splits(params))
        out_u, out_a = [], []
        for p, g, acc, mult, c, split in zip(p_leaves, g_leaves, a_leaves, m_leaves, c_leaves,
                                             s_leaves):
            if np.size(p) == 0:
                out_u.append(jnp.zeros_like(g))
                out_a.append(acc)
                continue
            pt, gt = as_tensor(p).astype(jnp.float32), as_tensor(g).astype(jnp.float32)
            gt = F.neutralize(gt)     # (a non-finite pt element: see F.finite_or_zero)
            if c != 1.0:
                pt, gt = pt / c, gt * c
            leaf_step = _compact_step if compact else _classic_step
            step, acc = leaf_step(theta["nn"], config, dec, pt, gt, acc, time_in, split)
            step = step * (sm * sched)
            out_u.append((-(mult * c) * step).reshape(np.shape(p)).astype(jnp.result_type(g)))
            out_a.append(acc)
        new_state = LOState(acc=jax.tree.unflatten(treedef, out_a), count=state.count + 1)
        return jax.tree.unflatten(treedef, out_u), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _classic_step(nn, config, dec, p, g, acc, time_in, split):
    """AdafacMLPLOpt's step direction times magnitude for one tensor, and its accumulators."""
    del split
    acc, fac_g, fac_m = F.update_accumulators(acc, g, dec["momentum"], dec["rms"],
                                              dec["adafactor"])
    elem, row, col, scale = F.feature_parts(p, g, acc, fac_g, fac_m)
    d, a = _mlp_direction_magnitude(nn, elem, row, col, scale, time_in, tuple(p.shape))
    return d * jnp.exp(a * config.exp_mult), acc


def _compact_step(nn, config, dec, p, g, acc, time_in, split):
    """:mod:`lopt.learned.compact`'s step for one tensor, and its accumulators. Non-finite parameter
    elements enter the features as 0, so they do not poison the tensor's normalizers."""
    acc = C.update_accumulators(acc, g, dec["momentum"], dec["rms"])
    out = C.raw_outputs(nn, g, F.neutralize(p), acc, time_in)
    d = out[0]
    if config.output_norm:
        d = C.rms_normalize(d)
    if split is not None:
        d = C.orthogonal_direction(d, split, config.mup_base)
    if config.magnitude:
        d = d * jnp.exp(out[1] * config.exp_mult)
    return d, acc


def _orthogonal_splits(roles, overrides, enabled: bool):
    """``params -> tree`` of each hidden matrix's fan-in axes (the leaves a compact μLO
    orthogonalizes), None elsewhere; computed once per parameter structure."""
    cache: dict = {}

    def get(params):
        leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
        key = (treedef, tuple(np.shape(x) for _, x in leaves))
        if key not in cache:
            out = [None] * len(leaves)
            if enabled:
                role_leaves = treedef.flatten_up_to(R.resolve_roles(params, roles, overrides))
                out = [R.fan_in_axes(R.path_str(path), np.shape(x))
                       if role == "hidden" and np.ndim(x) >= 2 else None
                       for (path, x), role in zip(leaves, role_leaves)]
            cache[key] = jax.tree_util.tree_unflatten(treedef, out)
        return cache[key]
    return get


def make_from_config(theta: Any, config: LOConfig, *, roles: Any = None,
                     role_overrides: Mapping[str, str] | None = None,
                     mup_in: str = "optimizer", num_steps: int | None = None):
    """:func:`make` with the variant and constants of a stored :class:`LOConfig` (any
    architecture's config: :func:`lopt.learned.registry.make_from_config`)."""
    check_theta(theta, config)
    return make(theta, mup=config.mup, step_mult=config.resolved_step_mult,
                exp_mult=config.exp_mult, roles=roles, role_overrides=role_overrides,
                mup_in=mup_in, num_steps=num_steps, config=config)
