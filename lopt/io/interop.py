"""Import / export of meta-parameters in learned_optimization's ``AdafacMLPLOpt`` layout.

learned_optimization stores theta as a haiku dict::

    {"momentum_decays": [3], "rms_decays": [1], "adafactor_decays": [3],
     "nn": {"~": {"w0": [39, H], "b0": [H], "w1": ..., "b1": ..., "w2": [H, 2], "b2": [2]}}}

The decay entries are offsets added to ``log(1 - d0) / 10`` of the initial decays
(0.9, 0.99, 0.999 / 0.999), exactly as in :func:`lopt.learned.decays`, so theta maps
one-to-one. Flat haiku names (``"nn/~"``) are accepted as well.

Reference: Metz et al., arXiv 2203.11860 (google/learned_optimization, adafac_mlp_lopt).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from lopt.learned.mulo import LOConfig, check_theta

_DECAY_KEYS = ("momentum_decays", "rms_decays", "adafactor_decays")


def to_learned_optimization(theta: Mapping[str, Any]) -> dict:
    """Our theta -> learned_optimization's AdafacMLPLOpt theta (numpy float32 arrays)."""
    out = {k: np.asarray(theta[k], np.float32) for k in _DECAY_KEYS}
    out["nn"] = {"~": {k: np.asarray(v, np.float32) for k, v in theta["nn"].items()}}
    return out


def from_learned_optimization(lo_theta: Mapping[str, Any]) -> dict:
    """learned_optimization's AdafacMLPLOpt theta -> our theta.

    Accepts the nested haiku form (``theta["nn"]["~"]``) or the flat one
    (``theta["nn/~"]``). Raises ValueError naming what is missing.
    """
    missing = [k for k in _DECAY_KEYS if k not in lo_theta]
    if "nn" in lo_theta and "~" in lo_theta["nn"]:
        nn = lo_theta["nn"]["~"]
    elif "nn/~" in lo_theta:
        nn = lo_theta["nn/~"]
    else:
        nn = None
        missing.append("nn/~")
    if missing:
        raise ValueError(f"not an AdafacMLPLOpt theta: missing {missing}")
    nn_keys = sorted(nn)
    layers = len(nn_keys) // 2
    if set(nn_keys) != {f"{p}{i}" for i in range(layers) for p in "wb"}:
        raise ValueError(f"not an AdafacMLPLOpt theta: MLP weights are {nn_keys}, "
                         "expected w0, b0, w1, b1, ...")
    theta = {k: np.asarray(lo_theta[k], np.float32) for k in _DECAY_KEYS}
    theta["nn"] = {k: np.asarray(v, np.float32) for k, v in nn.items()}
    # AdafacMLPLOpt's architecture (39 inputs, the classic time features) at the hidden
    # width and depth the weights declare: a wrong shape fails here, not at the first update
    w0 = theta["nn"]["w0"]
    check_theta(theta, LOConfig(hidden_size=int(w0.shape[-1]) if w0.ndim == 2 else 1,
                                hidden_layers=max(layers - 1, 1)))
    return theta
