"""μLO optimizers: the learned optimizer (μLO / SP LO), μP roles, and baselines.

Every optimizer here is an ``optax.GradientTransformation``. A learned optimizer is
``theta = init_theta(key, config)`` plus ``make(theta, ...)``; a trained one is
``load(path)``.
"""

from lopt.baselines import BASELINES, Baseline, modular, muon, spectral
from lopt.checkpoint import CheckpointError, describe_roles, load, load_theta, save, start_theta
from lopt.features import NUM_INPUTS, time_features
from lopt.interop import from_learned_optimization, to_learned_optimization
from lopt.learned import (COMPACT, LOConfig, LOState, MULO, SP_LO, NumStepsError, adam_theta,
                          check_theta, config_from_dict, decays, extend_theta, init_theta,
                          make, make_from_config)
from lopt.mup import forward_multiplier, init_leaf, kernel_init, mup_init_params
from lopt.riemannian import riemannian_lowrank
from lopt.roles import (ROLES, fan_in, fan_ins, infer_roles, leaf_fan_in,
                        lr_multipliers, readout_multipliers)
from lopt.schatten import adaptive_schatten
from lopt.velo import MUVELO, SP_VELO, VeLOConfig, init_velo_theta, make_velo

__all__ = [
    "BASELINES", "Baseline", "modular", "muon", "spectral", "riemannian_lowrank",
    "adaptive_schatten",
    "CheckpointError", "load", "load_theta", "save", "start_theta",
    "NUM_INPUTS", "time_features", "from_learned_optimization", "to_learned_optimization",
    "COMPACT", "LOConfig", "LOState", "MULO", "SP_LO", "NumStepsError", "adam_theta", "extend_theta", "check_theta",
    "config_from_dict", "decays", "init_theta", "make",
    "make_from_config", "forward_multiplier", "init_leaf", "kernel_init", "mup_init_params",
    "ROLES", "describe_roles", "fan_in", "fan_ins", "infer_roles", "leaf_fan_in",
    "lr_multipliers", "readout_multipliers",
    "MUVELO", "SP_VELO", "VeLOConfig", "init_velo_theta", "make_velo",
]
