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

import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from lopt.mup.roles import fan_in, fan_ins, is_embedding_table, leaf_name, path_str, resolve_roles

_GAIN_NAMES = ("scale", "gain", "gamma")
# He et al. (arXiv 1502.01852): the variance-preserving gain of ReLU, the MLP tasks' init
# (meta_train.models.GAINS["relu"]).
RELU_GAIN = math.sqrt(2.0)
# attention query kernels: Flax MultiHeadDotProductAttention / nnx "query", "wq", "q_proj"
_QUERY_NAMES = re.compile(r"(^|/)(query|wq|q_proj)(/|$)", re.I)


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
                    role_overrides: Mapping[str, str] | None = None, *,
                    gain: float = RELU_GAIN, embed_std: float = 1.0,
                    zero_query: bool = True) -> Any:
    """Re-initializes any parameter tree (e.g. from ``model.init``) as the project's μP task
    models are initialized, the init the shipped μLOs were meta-trained on
    (:mod:`meta_train.models`):

    * input and hidden kernels N(0, gain^2 / fan_in), fan-in per :func:`lopt.fan_ins`
      (stacked kernels per layer); ``gain`` defaults to He's sqrt(2) for ReLU, the MLP
      tasks' init (``init_scheme="he"``); the μP transformer tasks use ``gain=1.0``;
    * embedding tables (``nn.Embed``, ``wte``, ``pos``...; a tied embedding too) N(0,
      ``embed_std``^2): unit variance as the μP LM's token and position embeddings (an
      embedding reads a one-hot input, fan-in "1");
    * attention query kernels zero when ``zero_query`` (μP transformers, Tensor Programs V
      sec. 4, as the tasks do), the readout zero;
    * vectors: ones where the path ends in scale/gain/gamma, zeros elsewhere (biases).

    With a learned optimizer made with ``mup_in="optimizer"`` (the default), a plain model
    re-initialized this way trains exactly as the μP model with a ``1/fan_in`` readout
    multiplier would; models that carry that multiplier use ``mup_in="model"``.
    """
    roles = resolve_roles(params, roles, role_overrides)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    role_leaves = treedef.flatten_up_to(roles)
    fans = treedef.flatten_up_to(fan_ins(params))
    keys = jax.random.split(key, max(1, len(leaves)))
    out = []
    for k, (path, p), role, fi in zip(keys, leaves, role_leaves, fans):
        name, shape = leaf_name(path_str(path)), tuple(p.shape)
        if role == "input" and is_embedding_table(name, shape):
            out.append((embed_std * jax.random.normal(k, shape, jnp.float32)).astype(p.dtype))
        elif role == "hidden" and zero_query and _QUERY_NAMES.search(name):
            out.append(jnp.zeros(shape, p.dtype))
        else:
            out.append(init_leaf(k, shape, role, dtype=p.dtype, std_mult=gain, fan_in_=fi,
                                 gain=name.rsplit("/", 1)[-1].lower() in _GAIN_NAMES))
    return jax.tree_util.tree_unflatten(treedef, out)
