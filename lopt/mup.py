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

from lopt.roles import fan_in, leaf_fan_in, path_str, resolve_roles

_GAIN_NAMES = ("scale", "gain", "gamma")


def init_leaf(key: jax.Array, shape, role: str, *, dtype=jnp.float32, gain: bool = False,
              mup: bool = True, std_mult: float = 1.0, fan_in_: int | None = None
              ) -> jax.Array:
    """Initializes one parameter of the given role.

    Args:
      key: PRNG key.
      shape: leaf shape (Flax layout, last axis is the output).
      role: ``input``/``hidden``/``output``/``vector``.
      dtype: parameter dtype.
      gain: for vectors, initialize to ones (norm scales) instead of zeros.
      mup: μP (zero readout) or standard parametrization (fan-in init everywhere).
      std_mult: multiplies the ``1/sqrt(fan_in)`` standard deviation of input/hidden
        kernels (e.g. He's sqrt(2) for ReLU); the SP readout keeps ``1/sqrt(fan_in)``.
      fan_in_: the kernel's fan-in if not ``prod(shape[:-1])`` (see ``leaf_fan_in``).
    """
    shape = tuple(shape)
    if role == "vector":
        return (jnp.ones if gain else jnp.zeros)(shape, dtype)
    if role == "output" and mup:
        return jnp.zeros(shape, dtype)
    std = (fan_in_ or fan_in(shape)) ** -0.5
    if role != "output":
        std = std * std_mult
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
    With a learned optimizer made with ``mup_in="optimizer"`` (the default), a plain model
    re-initialized this way trains exactly as the μP model with a ``1/fan_in`` readout
    multiplier would; models that carry that multiplier use ``mup_in="model"``.
    """
    roles = resolve_roles(params, roles, role_overrides)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    role_leaves = treedef.flatten_up_to(roles)
    keys = jax.random.split(key, max(1, len(leaves)))
    out = []
    for k, (path, p), role in zip(keys, leaves, role_leaves):
        name = path_str(path).rsplit("/", 1)[-1].lower()
        out.append(init_leaf(k, p.shape, role, dtype=p.dtype, gain=name in _GAIN_NAMES,
                             fan_in_=leaf_fan_in(path_str(path), p.shape)))
    return jax.tree_util.tree_unflatten(treedef, out)
