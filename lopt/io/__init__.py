"""Learned optimizers on disk and between libraries: checkpoints (:mod:`~lopt.io.checkpoint`:
save, load, the theta a run starts from), learned_optimization's theta layout
(:mod:`~lopt.io.interop`), the code's commit and host (:mod:`~lopt.io.provenance`), and the
run-directory locks meta-training and the eval cache share (:mod:`~lopt.io.locks`; those two
are used by module).
"""

from lopt.io.checkpoint import (CheckpointError, describe_roles, load, load_theta, save,
                                shipped_dir, start_theta)
from lopt.io.interop import from_learned_optimization, to_learned_optimization

__all__ = [
    "CheckpointError", "describe_roles", "load", "load_theta", "save", "shipped_dir",
    "start_theta", "from_learned_optimization", "to_learned_optimization",
]
