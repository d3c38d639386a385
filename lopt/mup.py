"""μP initialization and forward multipliers for optimizee models.

The table of Tensor Programs V (Yang et al., arXiv 2203.03466, Table 3) as used by μLO's
MuMLP (Thérien et al., arXiv 2406.00153):

======  ========================  ==========================
role    init                      forward multiplier
======  ========================  ==========================
input   N(0, 1/fan_in)            input_mult (1)
hidden  N(0, 1/fan_in)            1
output  zeros                     output_mult / fan_in
vector  zeros (ones for gains)    1
======  ========================  ==========================

Width scaling lives here and nowhere else: models call :func:`init_leaf` /
:func:`forward_multiplier`; users' Flax models can re-initialize any parameter tree with
:func:`mup_init_params` and use :func:`kernel_init` as a Flax ``kernel_init``.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from lopt.roles import fan_in, path_str, resolve_roles

_GAIN_NAMES = ("scale", "gain", "gamma")


def init_leaf(key: jax.Array, shape, role: str, *, dtype=jnp.float32, gain: bool = False,
              mup: bool = True) -> jax.Array:
    """Initializes one parameter of the given role.

    Args:
      key: PRNG key.
      shape: leaf shape (Flax layout, last axis is the output).
      role: ``input``/``hidden``/``output``/``vector``.
      dtype: parameter dtype.
      gain: for vectors, initialize to ones (norm scales) instead of zeros.
      mup: μP (zero readout) or standard parametrization (fan-in init everywhere).
    """
    shape = tuple(shape)
    if role == "vector":
        return (jnp.ones if gain else jnp.zeros)(shape, dtype)
    if role == "output" and mup:
        return jnp.zeros(shape, dtype)
    std = fan_in(shape) ** -0.5
    return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def forward_multiplier(role: str, fan_in_: int, *, mup: bool = True,
                       output_mult: float = 1.0, input_mult: float = 1.0) -> float:
    """Static multiplier applied to a layer's output in the forward pass."""
    if not mup:
        return 1.0
    if role == "output":
        return output_mult / fan_in_
    if role == "input":
        return input_mult
    return 1.0


def kernel_init(role: str, mup: bool = True):
    """A Flax-compatible ``kernel_init(key, shape, dtype)`` for a role."""
    def init(key, shape, dtype=jnp.float32):
        return init_leaf(key, shape, role, dtype=dtype, mup=mup)
    return init


def mup_init_params(key: jax.Array, params: Any, roles: Any = None,
                    role_overrides: Mapping[str, str] | None = None) -> Any:
    """Re-initializes any parameter tree (e.g. from ``model.init``) per the μP table.

    Vectors whose path ends in scale/gain/gamma become ones, other vectors zeros.
    Forward multipliers (``output_mult / fan_in`` on the readout) remain the model's job.
    """
    roles = resolve_roles(params, roles, role_overrides)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    role_leaves = treedef.flatten_up_to(roles)
    keys = jax.random.split(key, max(1, len(leaves)))
    out = []
    for k, (path, p), role in zip(keys, leaves, role_leaves):
        name = path_str(path).rsplit("/", 1)[-1].lower()
        out.append(init_leaf(k, p.shape, role, dtype=p.dtype, gain=name in _GAIN_NAMES))
    return jax.tree_util.tree_unflatten(treedef, out)
