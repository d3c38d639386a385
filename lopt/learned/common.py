"""What the learned-optimizer architectures share: the initial accumulator decays, the
errors they raise, and the checks of theta and gradient shapes.

Each architecture (:mod:`lopt.learned.mulo`, :mod:`lopt.learned.velo`) builds on this module
and on :mod:`lopt.learned.features`, never on another architecture;
:mod:`lopt.learned.registry` is the one place that knows them all.
"""

from __future__ import annotations

import jax
import numpy as np

from lopt.mup import roles as R

# AdafacMLPLOpt's accumulator decays at theta = 0 (learned_optimization's defaults)
INITIAL_MOMENTUM_DECAYS = (0.9, 0.99, 0.999)
INITIAL_RMS_DECAYS = (0.999,)
INITIAL_ADAFACTOR_DECAYS = (0.9, 0.99, 0.999)
# where the readout's μP forward multiplier lives: in the optimizer (plain models) or the model
MUP_IN = ("optimizer", "model")


class NumStepsError(ValueError):
    """A learned optimizer that needs the run's total step count was not given one."""


class GradShapeError(ValueError):
    """A gradient leaf whose shape differs from its parameter's."""


def check_grad_shapes(grads, params) -> None:
    """Raises one :class:`GradShapeError` naming the first leaf whose gradient shape differs
    from its parameter's (static shapes: free under jit), before jax would broadcast them."""
    for (path, p), g in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                            jax.tree.structure(params).flatten_up_to(grads)):
        if np.shape(g) != np.shape(p):
            raise GradShapeError(
                f"gradient of {R.path_str(path)!r} has shape {tuple(np.shape(g))} but the "
                f"parameter has shape {tuple(np.shape(p))}: pass the gradients of these "
                "parameters (opt.update(grads, state, params))")


def as_tensor(x):
    # Scalars are handled as shape-[1] tensors (the network needs an element axis).
    return x.reshape(1) if np.ndim(x) == 0 else x


def check_theta_shapes(theta, init, architecture: str) -> None:
    """Raises one ValueError naming ``architecture`` unless theta has the tree and shapes
    that ``init()`` (a random-init thunk) produces."""
    want = jax.tree.map(lambda x: tuple(x.shape), jax.eval_shape(init))
    try:
        got = jax.tree.map(lambda x: tuple(np.shape(x)), theta)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise ValueError(f"theta is not a pytree of arrays: {e}") from None
    if got != want:
        raise ValueError(f"theta does not match the {architecture}: expected shapes {want}, "
                         f"got {got}")
