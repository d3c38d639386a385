"""The learned optimizers: μLO (:mod:`~lopt.learned.mulo`, its compact variant
:mod:`~lopt.learned.compact`) and μVeLO (:mod:`~lopt.learned.velo`) over the shared
accumulators and features (:mod:`~lopt.learned.features`, :mod:`~lopt.learned.common`).

:mod:`~lopt.learned.registry` maps a checkpoint's ``arch`` ("mlp", "velo") to its
architecture; :func:`config_from_dict`, :func:`init_theta`, :func:`check_theta` and
:func:`make_from_config` here are its dispatchers and accept any architecture's config.
"""

from lopt.learned.common import GradShapeError, NumStepsError
from lopt.learned.features import NUM_INPUTS, time_features
from lopt.learned.mulo import (COMPACT, LOConfig, LOState, MULO, SP_LO, adam_theta, decays,
                               extend_theta, make)
from lopt.learned.registry import (ARCHS, Architecture, architecture, check_theta,
                                   config_from_dict, init_theta, make_from_config)
from lopt.learned.velo import MUVELO, SP_VELO, VeLOConfig, VeLOState, init_velo_theta, make_velo

__all__ = [
    "GradShapeError", "NumStepsError", "NUM_INPUTS", "time_features",
    "COMPACT", "LOConfig", "LOState", "MULO", "SP_LO", "adam_theta", "decays", "extend_theta",
    "make", "ARCHS", "Architecture", "architecture", "check_theta", "config_from_dict",
    "init_theta", "make_from_config",
    "MUVELO", "SP_VELO", "VeLOConfig", "VeLOState", "init_velo_theta", "make_velo",
]
