"""The per-parameter MLP learned optimizer, μLO and SP variants, as an optax transformation.

Per tensor, the accumulators of :mod:`lopt.features` feed one MLP shared by all
parameters (39 -> 32 -> 32 -> 2, ReLU) that outputs a direction ``d`` and magnitude ``a``;
``step = d * exp(a * exp_mult) * step_mult`` and ``p_new = p - lr_mult(p) * step``.

* SP LO: ``lr_mult = 1``, ``step_mult = 1e-3`` (learned_optimization default).
* μLO:   ``lr_mult = 1/fan_in`` for hidden weights, 1 otherwise; ``step_mult = 1e-2``.

References: Thérien et al., μLO, arXiv 2406.00153; Metz et al., small_fc_lopt,
arXiv 2203.11860.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt import features as F
from lopt import roles as R

INITIAL_MOMENTUM_DECAYS = (0.9, 0.99, 0.999)
INITIAL_RMS_DECAYS = (0.999,)
INITIAL_ADAFACTOR_DECAYS = (0.9, 0.99, 0.999)


@dataclasses.dataclass(frozen=True)
class LOConfig:
    """Architecture and constants of a learned optimizer; stored next to every theta.

    Attributes:
      mup: μLO (True: hidden LR multiplier 1/fan_in) or SP LO (False).
      hidden_size: width of the per-parameter MLP.
      hidden_layers: number of hidden layers of the MLP.
      exp_mult: scale of the magnitude output inside ``exp``.
      step_mult: output scale; None means 1e-2 for μLO and 1e-3 for SP.
    """
    mup: bool = True
    hidden_size: int = 32
    hidden_layers: int = 2
    exp_mult: float = 1e-3
    step_mult: float | None = None

    @property
    def resolved_step_mult(self) -> float:
        if self.step_mult is not None:
            return float(self.step_mult)
        return 1e-2 if self.mup else 1e-3

    @property
    def name(self) -> str:
        return "mulo" if self.mup else "sp-lo"

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


def decay_to_param(x):
    # learned_optimization's reparametrization keeping decays in (0, 1).
    return jnp.log(1 - x) / 10.0


def param_to_decay(x):
    return 1 - jnp.exp(x * 10.0)


def init_theta(key: jax.Array, config: LOConfig = MULO) -> dict:
    """Random meta-parameters: MLP weights (truncated normal, std 1/sqrt(fan_in)), zero
    biases, and zero decay offsets (decays start at 0.9/0.99/0.999).

    Args:
      key: PRNG key.
      config: architecture; only hidden_size / hidden_layers matter here.

    Returns:
      theta: ``{"momentum_decays": [3], "rms_decays": [1], "adafactor_decays": [3],
      "nn": {"w0", "b0", ...}}``, all float32.
    """
    sizes = [F.NUM_INPUTS] + [config.hidden_size] * config.hidden_layers + [2]
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


def decays(theta) -> dict:
    """The effective accumulator decays encoded by theta."""
    def one(init, off):
        return param_to_decay(decay_to_param(jnp.asarray(init, jnp.float32)) + off)
    return {"momentum": one(INITIAL_MOMENTUM_DECAYS, theta["momentum_decays"]),
            "rms": one(INITIAL_RMS_DECAYS, theta["rms_decays"]),
            "adafactor": one(INITIAL_ADAFACTOR_DECAYS, theta["adafactor_decays"])}


def check_theta(theta, config: LOConfig = MULO) -> None:
    """Raises one clear ValueError if theta does not fit the architecture in config."""
    want = jax.tree.map(lambda x: tuple(x.shape),
                        jax.eval_shape(lambda: init_theta(jax.random.key(0), config)))
    try:
        got = jax.tree.map(lambda x: tuple(np.shape(x)), theta)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise ValueError(f"theta is not a pytree of arrays: {e}") from None
    if got != want:
        raise ValueError(
            f"theta does not match the learned-optimizer architecture "
            f"(hidden_size={config.hidden_size}, hidden_layers={config.hidden_layers}): "
            f"expected shapes {want}, got {got}")


def _mlp_direction_magnitude(nn, elem, row, col, scale, step, shape):
    """Runs the shared MLP on one tensor's features; returns (direction, magnitude) [S]."""
    w0 = nn["w0"]
    w0s = w0[:F.NUM_TENSOR_FEATURES] * scale[:, None]      # normalization folded into W0
    hid = w0.shape[1]
    # The time features are the same for every element: one [11] x [11, H] product.
    bias0 = F.time_features(step) @ w0[F.NUM_TENSOR_FEATURES:] + nn["b0"]
    n = int(np.prod(shape))
    h = elem.reshape(n, -1) @ w0s[F.ELEM_ROWS]
    if col is None:
        h = h + row.reshape(n, -1) @ w0s[F.DIAG_ROWS]
        h = h.reshape(shape + (hid,))
    else:
        d1, d0 = F.factored_dims(shape)
        h = h.reshape(shape + (hid,))
        h = h + jnp.expand_dims(row @ w0s[F.ROW_ROWS], d0)
        h = h + jnp.expand_dims(col @ w0s[F.COL_ROWS], d1)
    h = jax.nn.relu(h + bias0).reshape(n, hid)
    num_layers = len(nn) // 2
    for i in range(1, num_layers):
        h = h @ nn[f"w{i}"] + nn[f"b{i}"]
        if i < num_layers - 1:
            h = jax.nn.relu(h)
    return h[:, 0].reshape(shape), h[:, 1].reshape(shape)


class LOState(NamedTuple):
    """State of the learned optimizer."""
    acc: Any          # params-shaped tree of features.Accumulators (float32)
    count: jax.Array  # [] int32: number of updates taken


def _as_tensor(x):
    # Scalars are handled as shape-[1] tensors (the network needs an element axis).
    return x.reshape(1) if np.ndim(x) == 0 else x


def make(theta: Any, *, mup: bool = True, step_mult: float | None = None,
         exp_mult: float = 1e-3, roles: Any = None,
         role_overrides: Mapping[str, str] | None = None
         ) -> optax.GradientTransformationExtraArgs:
    """Turns meta-parameters into an optax optimizer.

    Args:
      theta: meta-parameters from :func:`init_theta`, a checkpoint, or meta-training.
      mup: μLO (hidden-weight LR multiplier 1/fan_in) or SP LO.
      step_mult: output scale; None means 1e-2 (μLO) / 1e-3 (SP).
      exp_mult: magnitude scale inside ``exp``.
      roles: optional role tree (see :func:`lopt.infer_roles`); inferred if None.
      role_overrides: ``{regex: role}`` patterns applied when inferring.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` requires ``params``.
    """
    sm = LOConfig(mup=mup, step_mult=step_mult).resolved_step_mult
    dec = decays(theta)

    def init_fn(params):
        return LOState(acc=jax.tree.map(lambda p: F.init_accumulators(_as_tensor(p)), params),
                       count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("the learned optimizer needs the parameters: call "
                             "opt.update(grads, state, params)")
        role_tree = R.resolve_roles(params, roles, role_overrides)
        mults = R.lr_multipliers(params, role_tree, mup)
        p_leaves, treedef = jax.tree.flatten(params)
        g_leaves = treedef.flatten_up_to(updates)
        a_leaves = treedef.flatten_up_to(state.acc)
        m_leaves = treedef.flatten_up_to(mults)
        out_u, out_a = [], []
        for p, g, acc, mult in zip(p_leaves, g_leaves, a_leaves, m_leaves):
            if np.size(p) == 0:
                out_u.append(jnp.zeros_like(g))
                out_a.append(acc)
                continue
            pt, gt = _as_tensor(p), _as_tensor(g)
            acc, fac_g, fac_m = F.update_accumulators(
                acc, gt, dec["momentum"], dec["rms"], dec["adafactor"])
            elem, row, col, scale = F.feature_parts(pt, gt, acc, fac_g, fac_m)
            d, a = _mlp_direction_magnitude(theta["nn"], elem, row, col, scale, state.count,
                                            tuple(pt.shape))
            step = d * jnp.exp(a * exp_mult) * sm
            out_u.append((-mult * step).reshape(np.shape(p)).astype(jnp.result_type(g)))
            out_a.append(acc)
        new_state = LOState(acc=jax.tree.unflatten(treedef, out_a), count=state.count + 1)
        return jax.tree.unflatten(treedef, out_u), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def make_from_config(theta: Any, config: LOConfig, *, roles: Any = None,
                     role_overrides: Mapping[str, str] | None = None):
    """:func:`make` with the variant and constants of a stored :class:`LOConfig`."""
    check_theta(theta, config)
    return make(theta, mup=config.mup, step_mult=config.resolved_step_mult,
                exp_mult=config.exp_mult, roles=roles, role_overrides=role_overrides)
