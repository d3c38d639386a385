"""μVeLO: VeLO's per-tensor LSTM learned optimizer in μP form, as an optax transformation.

Architecture (Metz et al., VeLO, arXiv 2211.09760, ``hyper_v2``; its μP form μVeLO_M from
Thérien et al., μLO, arXiv 2406.00153, with the μVeLO configuration: LSTM width 16, a bank
of 8 per-parameter MLPs of width 4, ``interp_mult`` 1, no parameter-scale factor):

* **Per-tensor LSTM.** Each parameter tensor is one row of the LSTM's batch. Its inputs
  (28 per tensor) are VeLO's fraction of training ``tanh(10 (t/T - c))`` at 9 offsets, 9
  loss features (the loss's bias-corrected EMAs at 10 half-lives from 10 steps to ``T``,
  relative to their running minima), the log mean second moment and the log variances of
  the 3 momenta and of the second moment of the tensor after dividing it by its RMS, and a
  one-hot of its rank. The inputs are mixed across tensors by a max-pooled layer before the
  LSTM. Two heads: a per-tensor LR multiplier and mixing weights over the MLP bank.
* **Per-parameter MLP** (30 -> 4 -> 4 -> 3, ReLU) on the per-element features of the
  AdafacMLPLOpt family (gradient, parameter, 3 momenta, second moment, Adafactor factors,
  each channel normalized by its mean square over the tensor), with weights
  ``interp_mult * mean_k(c_k theta_k)`` for the tensor's mixing weights ``c``. It outputs a
  direction ``d`` and a magnitude ``a``: ``step = d exp(0.001 a) 0.001 lr_mult``.
* **μP.** The step is multiplied by the μP LR multiplier of the tensor (``b/fan_in`` for
  hidden weights, :func:`lopt.mup.roles.lr_multipliers`), and the readout's forward
  multiplier is applied on the optimizer side for plain models (``mup_in="optimizer"``),
  exactly as for μLO (:mod:`lopt.learned.mulo`). ``mup=False`` is the SP VeLO of identical
  architecture.

The optimizer needs the run's total step count (``num_steps=T``, as an optax schedule) and
each step's training loss: ``opt.update(grads, state, params, value=loss)`` (``value`` is
optax's name for it, as in ``optax.contrib.reduce_on_plateau``).

Where this differs from ``hyper_v2`` (our own implementation, not a port of its
checkpoints): the variance of the second moment is taken about its own mean (``hyper_v2``
subtracts the momenta's mean, which makes the feature 3 wide), and the unused first mixing
layer is not created; gradients are neutralized per element (non-finite -> 0, clipped to
±1000) as in ``hyper_v2`` (the μLO sets non-finite and huge elements to 0 instead,
:func:`lopt.learned.features.neutralize`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.learned import features as F
from lopt.learned.common import (INITIAL_ADAFACTOR_DECAYS, INITIAL_MOMENTUM_DECAYS,
                                 INITIAL_RMS_DECAYS, MUP_IN, NumStepsError, as_tensor,
                                 check_grad_shapes, check_theta_shapes)
from lopt.mup import roles as R

NUM_LOSS_FEATURES = 9
MAX_RANK = 5
# fraction (9) + loss (9) + mean second moment (1) + rank one-hot (5) + var momenta (3)
# + var second moment (1)
NUM_TENSOR_INPUTS = len(F.FRACTION_OFFSETS) + NUM_LOSS_FEATURES + 1 + MAX_RANK + 3 + 1
NUM_ELEM_INPUTS = 30
GRAD_CLIP = 1000.0


@dataclasses.dataclass(frozen=True)
class VeLOConfig:
    """Architecture and constants of a (μ)VeLO; defaults are μVeLO_M's.

    Attributes:
      mup: μVeLO (hidden steps x b/fan_in, readout μP) or SP VeLO (False).
      lstm_hidden: width of the per-tensor LSTM.
      param_inits: size of the bank of per-parameter MLP weight sets.
      ff_hidden, ff_layers: width and number of hidden layers of the per-parameter MLP.
      interp_mult: scale of the bank mixture ``interp_mult * mean_k(c_k theta_k)``.
      exp_mult, step_mult: ``step = d * exp(a * exp_mult) * step_mult * lr_mult``.
      param_scale_mult: also multiply the step by the tensor's RMS (VeLO; off in μVeLO).
      mup_base: μP base width (see :class:`lopt.LOConfig`); 1 = absolute ``1/fan_in``.
    """
    mup: bool = True
    lstm_hidden: int = 16
    param_inits: int = 8
    ff_hidden: int = 4
    ff_layers: int = 2
    interp_mult: float = 1.0
    exp_mult: float = 1e-3
    step_mult: float = 1e-3
    param_scale_mult: bool = False
    mup_base: float = 1.0

    arch: ClassVar[str] = "velo"
    # VeLO's features need the run length and each step's training loss
    needs_num_steps: ClassVar[bool] = True
    needs_loss: ClassVar[bool] = True

    def to_dict(self) -> dict:
        return {"arch": self.arch, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VeLOConfig":
        d = {k: v for k, v in d.items() if k != "arch"}
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown VeLO config keys {sorted(unknown)}")
        return cls(**d)

    def __post_init__(self):
        for name in ("lstm_hidden", "param_inits", "ff_hidden", "ff_layers"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}={v!r}: must be an integer >= 1")
        for name in ("interp_mult", "exp_mult", "step_mult", "mup_base"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"{name}={v!r}: must be a finite number")
        for name in ("mup", "param_scale_mult"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r}: must be bool")


MUVELO = VeLOConfig()
SP_VELO = VeLOConfig(mup=False)


def _linear(key, n_in: int, n_out: int) -> dict:
    # truncated normal, std 1/sqrt(fan_in), zero bias (the reference's haiku default)
    return {"w": jax.random.truncated_normal(key, -2.0, 2.0, (n_in, n_out)) / np.sqrt(n_in),
            "b": jnp.zeros((n_out,), jnp.float32)}


def init_velo_theta(key: jax.Array, config: VeLOConfig = MUVELO) -> dict:
    """Random meta-parameters: ``{"lstm_init", "tensor_net", "bank"}`` (all float32)."""
    h, k = config.lstm_hidden, config.param_inits
    keys = jax.random.split(key, 6)
    tensor_net = {"mix": _linear(keys[0], NUM_TENSOR_INPUTS, h),
                  "proj": _linear(keys[1], NUM_TENSOR_INPUTS, h),
                  "lstm": _linear(keys[2], 2 * h, 4 * h),
                  "controls": _linear(keys[3], h, k),
                  "lr_mult": _linear(keys[4], h, 1)}
    # Heads start at bias 1 (the reference starts them at 0): every tensor then mixes the
    # bank evenly and takes steps of step_mult x its μP multiplier, instead of products of
    # two near-zero heads (steps ~1e-4 x step_mult) that ES has no signal to grow.
    tensor_net["controls"]["b"] = jnp.ones((k,), jnp.float32)
    tensor_net["lr_mult"]["b"] = jnp.ones((1,), jnp.float32)
    sizes = [NUM_ELEM_INPUTS] + [config.ff_hidden] * config.ff_layers + [3]

    def member(mkey):
        mkeys = jax.random.split(mkey, len(sizes) - 1)
        out = {}
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layer = _linear(mkeys[i], a, b)
            out[f"w{i}"], out[f"b{i}"] = layer["w"], layer["b"]
        return out
    bank = jax.vmap(member)(jax.random.split(keys[5], k))
    return {"lstm_init": {"h": jnp.zeros((h,), jnp.float32), "c": jnp.zeros((h,), jnp.float32)},
            "tensor_net": tensor_net, "bank": bank}


def check_velo_theta(theta, config: VeLOConfig = MUVELO) -> None:
    """Raises one clear ValueError if theta does not fit the architecture in config."""
    check_theta_shapes(theta, lambda: init_velo_theta(jax.random.key(0), config),
                       f"VeLO architecture (lstm_hidden={config.lstm_hidden}, param_inits="
                       f"{config.param_inits}, ff_hidden={config.ff_hidden})")


class LossBuffer(NamedTuple):
    """EMAs of the training loss at 10 half-lives (VeLO's loss features)."""
    means: jax.Array        # [10]
    running_min: jax.Array  # [10]
    count: jax.Array        # [] int32: losses taken in
    last: jax.Array = 0.0   # [] float32: the last finite loss, which stands in for a NaN/inf one


class VeLOState(NamedTuple):
    acc: Any            # params-shaped tree of features.Accumulators
    lstm_h: jax.Array   # [tensors, H]
    lstm_c: jax.Array   # [tensors, H]
    loss: LossBuffer
    count: jax.Array    # [] int32


def _loss_decays(num_steps):
    # half-lives log-spaced from 10 steps to the run length
    n = jnp.maximum(jnp.asarray(num_steps, jnp.float32), 10.0)
    halflife = 10.0 ** jnp.linspace(1.0, jnp.log10(n), 10)
    return jnp.exp(-1.0 / halflife)


def update_loss_buffer(buf: LossBuffer, loss, num_steps) -> tuple[LossBuffer, jax.Array]:
    """One loss into the buffer; returns (buffer, the 9 loss features in [-1, 1]).

    Each EMA is bias-corrected; a loss above twice the largest corrected EMA is clipped
    there (spikes); feature ``i`` is where EMA ``i`` sits between its running minimum and
    the next-slower EMA, minus 1. The features are 0 for the first two steps.

    A NaN or inf loss is contained: it counts as the last finite loss (so the updates that
    follow equal those of the same run with that loss in its place), and before any finite
    loss it leaves the buffer as it is (features 0). The buffer stays finite."""
    decays = _loss_decays(num_steps)
    t = buf.count
    raw = jnp.asarray(loss, jnp.float32)
    finite = jnp.isfinite(raw)
    loss = jnp.where(finite, raw, jnp.asarray(buf.last, jnp.float32))
    prev = buf.means / (1.0 - decays ** jnp.maximum(t, 1))
    cap = jnp.where(t == 0, jnp.abs(loss), jnp.max(jnp.abs(prev)))
    loss = jnp.minimum(2.0 * cap, loss)
    means = decays * buf.means + (1.0 - decays) * loss
    cor = means / (1.0 - decays ** (t + 1))
    running_min = jnp.minimum(buf.running_min, cor)
    slower, cur, rmin = cor[1:], cor[:-1], running_min[:-1]
    feats = jnp.clip((cur - rmin) / jnp.maximum(1e-8, slower - rmin) - 1.0, -1.0, 1.0)
    feats = jnp.where(t + 1 <= 2, 0.0, feats)
    new = LossBuffer(means, running_min, t + 1,
                     jnp.where(finite, raw, jnp.asarray(buf.last, jnp.float32)))
    skip = ~finite & (t == 0)       # no finite loss yet: nothing to stand in for it
    new = jax.tree.map(lambda old, n: jnp.where(skip, jnp.asarray(old, n.dtype), n), buf, new)
    return new, jnp.where(skip, 0.0, feats)


def _clip_log_abs(v, scale=10.0):
    return 0.5 * jnp.clip(jnp.log(1e-8 + jnp.abs(scale * v)), -5.0, 5.0)


def tensor_features(p, acc: F.Accumulators, shape) -> jax.Array:
    """The 11 per-tensor statistics of one tensor (before its update): log mean second
    moment [1], rank one-hot [5], log variance of the momenta [3] and of the second moment
    [1], all after dividing the tensor's quantities by its RMS."""
    nmult = jax.lax.rsqrt(jnp.maximum(1e-9, jnp.mean(jnp.square(p))))
    m, v = acc.m * nmult, acc.v * nmult
    axes = tuple(range(len(shape)))
    var_m = jnp.mean(jnp.square(m - jnp.mean(m, axes, keepdims=True)), axes)
    mean_v = jnp.mean(v, axes)
    var_v = jnp.mean(jnp.square(v - jnp.mean(v, axes, keepdims=True)), axes)
    rank = sum(1 for s in shape if s > 1)
    onehot = jnp.asarray(np.eye(MAX_RANK + 1, MAX_RANK, dtype=np.float32)[min(rank, MAX_RANK)])
    return jnp.concatenate([_clip_log_abs(mean_v), onehot, _clip_log_abs(var_m),
                            _clip_log_abs(var_v)])


def _lstm(net, x, h, c):
    z = jnp.concatenate([x, h], -1) @ net["w"] + net["b"]
    i, g, f, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f + 1.0) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


def tensor_network(net, x, h, c):
    """Per-tensor LSTM step on inputs ``x`` [T, 28]: (controls [T, K], lr_mult [T], h, c)."""
    mixed = jax.nn.relu(x @ net["mix"]["w"] + net["mix"]["b"])
    x = x @ net["proj"]["w"] + net["proj"]["b"] + jnp.max(mixed, axis=0, keepdims=True)
    h, c = _lstm(net["lstm"], x, h, c)
    controls = h @ net["controls"]["w"] + net["controls"]["b"]
    lr_mult = (h @ net["lr_mult"]["w"] + net["lr_mult"]["b"])[:, 0]
    return controls, lr_mult, h, c


def elem_features(p, g, acc: F.Accumulators, fac_g, fac_m, shape) -> jax.Array:
    """The 30 per-element input channels [S, 30], each normalized by its mean square over
    the tensor (AdafacMLPLOpt's second-moment normalizer)."""
    rsq = jax.lax.rsqrt(acc.v + 1e-6)
    gf, pf = g[..., None], p[..., None]
    fd = F.factored_dims(shape)
    if fd is None:
        row = col = acc.diag
    else:
        d1, d0 = fd
        row = jnp.broadcast_to(jnp.expand_dims(acc.row, d0), shape + (3,))
        col = jnp.broadcast_to(jnp.expand_dims(acc.col, d1), shape + (3,))
    x = jnp.concatenate([gf, jnp.clip(gf, -0.1, 0.1), pf, acc.m, acc.v, acc.m * rsq, rsq, fac_g,
                         gf * rsq, row, col, jax.lax.rsqrt(row + 1e-8),
                         jax.lax.rsqrt(col + 1e-8), fac_m], -1)
    axes = tuple(range(len(shape)))
    return x * jax.lax.rsqrt(1e-5 + jnp.mean(jnp.square(x), axes, keepdims=True))


def _elem_mlp(weights, x):
    n = len(weights) // 2
    for i in range(n):
        x = x @ weights[f"w{i}"] + weights[f"b{i}"]
        if i < n - 1:
            x = jax.nn.relu(x)
    return x[..., 0], x[..., 1]


def make_velo(theta: Any, config: VeLOConfig = MUVELO, *, roles: Any = None,
              role_overrides: Mapping[str, str] | None = None, mup_in: str = "optimizer",
              num_steps: int | None = None) -> optax.GradientTransformationExtraArgs:
    """Turns (μ)VeLO meta-parameters into an optax optimizer.

    Args:
      theta: from :func:`init_velo_theta` or meta-training.
      config: the architecture (:data:`MUVELO` or :data:`SP_VELO`).
      roles, role_overrides, mup_in: as :func:`lopt.make`.
      num_steps: the run's total number of updates; ``update(..., num_steps=T)`` overrides.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update(grads, state, params,
      value=loss)`` needs the parameters and the step's training loss.

    Raises:
      ValueError: theta does not fit ``config`` or unknown ``mup_in``; NumStepsError at the
      first update without a step count.
    """
    if mup_in not in MUP_IN:
        raise ValueError(f"mup_in={mup_in!r}: must be 'optimizer' or 'model'")
    check_velo_theta(theta, config)
    if num_steps is not None and int(num_steps) < 1:
        raise NumStepsError(f"num_steps={num_steps}: must be >= 1")
    dec_m = jnp.asarray(INITIAL_MOMENTUM_DECAYS, jnp.float32)
    dec_v = jnp.asarray(INITIAL_RMS_DECAYS, jnp.float32)
    dec_f = jnp.asarray(INITIAL_ADAFACTOR_DECAYS, jnp.float32)
    multipliers = R.step_multipliers(roles, role_overrides, mup=config.mup,
                                     base=config.mup_base, in_model=mup_in == "model")

    def init_fn(params):
        multipliers(params)     # the roles now: the model's own params carry its creation order
        n = sum(1 for p in jax.tree.leaves(params) if np.size(p))
        h = jnp.broadcast_to(theta["lstm_init"]["h"], (n, config.lstm_hidden))
        c = jnp.broadcast_to(theta["lstm_init"]["c"], (n, config.lstm_hidden))
        acc = jax.tree.map(lambda p: F.init_accumulators(as_tensor(p)), params)
        buf = LossBuffer(jnp.zeros(10, jnp.float32), jnp.full(10, 1e12, jnp.float32),
                         jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32))
        return VeLOState(acc, h, c, buf, jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, *, value=None, num_steps=num_steps,
                  **extra_args):
        del extra_args
        if params is None:
            raise ValueError("VeLO needs the parameters: opt.update(grads, state, params, "
                             "value=loss)")
        if value is None:
            raise ValueError("VeLO needs each step's training loss: opt.update(grads, state, "
                             "params, value=loss)")
        if num_steps is None:
            raise NumStepsError("VeLO needs the run's total step count: "
                                "lopt.make_velo(..., num_steps=T)")
        check_grad_shapes(updates, params)
        mults, convs = multipliers(params)
        buf, loss_feats = update_loss_buffer(state.loss, value, num_steps)
        frac = F.fraction_features(state.count, num_steps)
        p_leaves, treedef = jax.tree.flatten(params)
        g_leaves = treedef.flatten_up_to(updates)
        a_leaves = treedef.flatten_up_to(state.acc)
        m_leaves, c_leaves = treedef.flatten_up_to(mults), treedef.flatten_up_to(convs)
        live = [i for i, p in enumerate(p_leaves) if np.size(p)]
        tensors = []
        for i in live:
            p, g, c = p_leaves[i], g_leaves[i], c_leaves[i]
            pt = F.finite_or_zero(as_tensor(p).astype(jnp.float32)) / c
            gt = as_tensor(g).astype(jnp.float32)
            gt = jnp.clip(jnp.nan_to_num(gt, nan=0.0, posinf=0.0, neginf=0.0),
                          -GRAD_CLIP, GRAD_CLIP) * c
            tensors.append((pt, gt))
        x = jnp.stack([jnp.concatenate([frac, loss_feats,
                                        tensor_features(pt, a_leaves[i], tuple(pt.shape))])
                       for i, (pt, _) in zip(live, tensors)])
        controls, lr_mult, h, cstate = tensor_network(theta["tensor_net"], x, state.lstm_h,
                                                      state.lstm_c)
        out_u = [jnp.zeros_like(g) for g in g_leaves]
        out_a = list(a_leaves)
        for j, (i, (pt, gt)) in enumerate(zip(live, tensors)):
            acc, fac_g, fac_m = F.update_accumulators(a_leaves[i], gt, dec_m, dec_v, dec_f)
            shape = tuple(pt.shape)
            weights = jax.tree.map(
                lambda w: config.interp_mult * jnp.tensordot(controls[j], w, 1)
                / config.param_inits, theta["bank"])
            d, a = _elem_mlp(weights, elem_features(pt, gt, acc, fac_g, fac_m, shape))
            step = d * jnp.exp(a * config.exp_mult) * config.step_mult * lr_mult[j]
            if config.param_scale_mult:
                step = step * jnp.sqrt(jnp.mean(jnp.square(pt)) + 1e-9)
            c = c_leaves[i]
            out_u[i] = (-(m_leaves[i] * c) * step).reshape(np.shape(p_leaves[i])).astype(
                jnp.result_type(g_leaves[i]))
            out_a[i] = acc
        new = VeLOState(jax.tree.unflatten(treedef, out_a), h, cstate, buf, state.count + 1)
        return jax.tree.unflatten(treedef, out_u), new

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
