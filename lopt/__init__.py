"""μLO optimizers: the learned optimizer (μLO / SP LO), μP roles, and baselines.

Every optimizer here is an ``optax.GradientTransformation``. A learned optimizer is
``theta = init_theta(key, config)`` plus ``make(theta, ...)``; a trained one is
``load(path)``.

Subpackages: :mod:`lopt.learned` (μLO, its compact variant, μVeLO, and the registry of
architectures), :mod:`lopt.mup` (parameter roles, μP init and multipliers),
:mod:`lopt.baselines` (hand-designed optimizers and their matrix functions) and
:mod:`lopt.io` (checkpoints, learned_optimization interop, provenance, locks).
"""

from lopt.baselines import (BASELINES, Baseline, adaptive_schatten, modular, muon,
                            riemannian_lowrank, spectral)
from lopt.io import (CheckpointError, describe_roles, from_learned_optimization, load,
                     load_theta, save, start_theta, to_learned_optimization)
from lopt.learned import (COMPACT, LOConfig, LOState, MULO, MUVELO, NUM_INPUTS, SP_LO, SP_VELO,
                          GradShapeError, NumStepsError, VeLOConfig, adam_theta, check_theta,
                          config_from_dict, decays, extend_theta, init_theta, init_velo_theta,
                          make, make_from_config, make_velo, time_features)
from lopt.mup import (ROLES, RoleInferenceError, RoleOverrideError, fan_in, fan_ins,
                      forward_multiplier, infer_roles, init_leaf, kernel_init, leaf_fan_in,
                      lr_multipliers, model_depth, mup_init_params, readout_multipliers)

__all__ = [
    "BASELINES", "Baseline", "modular", "muon", "spectral", "riemannian_lowrank",
    "adaptive_schatten",
    "CheckpointError", "load", "load_theta", "save", "start_theta",
    "NUM_INPUTS", "time_features", "from_learned_optimization", "to_learned_optimization",
    "COMPACT", "LOConfig", "LOState", "MULO", "SP_LO", "NumStepsError", "GradShapeError",
    "adam_theta", "extend_theta", "check_theta", "config_from_dict", "decays", "init_theta",
    "make", "make_from_config", "forward_multiplier", "init_leaf", "kernel_init",
    "mup_init_params", "ROLES", "RoleInferenceError", "RoleOverrideError", "describe_roles",
    "fan_in", "fan_ins", "infer_roles", "leaf_fan_in", "model_depth", "lr_multipliers",
    "readout_multipliers",
    "MUVELO", "SP_VELO", "VeLOConfig", "init_velo_theta", "make_velo",
]
