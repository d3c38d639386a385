"""μP for any parameter pytree: the roles of its leaves and their fan-ins
(:mod:`~lopt.mup.roles`: inference, learning-rate and readout multipliers, depth), and the
model's side of μP (:mod:`~lopt.mup.model`: initialization and forward multipliers).

References: Yang et al., Tensor Programs V, arXiv 2203.03466.
"""

from lopt.mup.model import forward_multiplier, init_leaf, kernel_init, mup_init_params
from lopt.mup.roles import (ROLES, RoleError, RoleInferenceError, RoleOverrideError,
                            describe_roles, fan_in, fan_ins, infer_roles, leaf_fan_in,
                            lr_multipliers, model_depth, readout_multipliers)

__all__ = [
    "forward_multiplier", "init_leaf", "kernel_init", "mup_init_params",
    "ROLES", "RoleError", "RoleInferenceError", "RoleOverrideError", "describe_roles",
    "fan_in", "fan_ins", "infer_roles", "leaf_fan_in", "lr_multipliers", "model_depth",
    "readout_multipliers",
]
