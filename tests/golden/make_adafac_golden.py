"""Writes ``adafac_mlp.npz``: a reference trajectory of learned_optimization's AdafacMLPLOpt.

The file pins the features and update of :mod:`lopt.learned.mulo` to the implementation whose
meta-parameters it imports (``tests/lopt/test_golden.py`` replays it). It is generated once
and committed; this script is not part of CI and must NOT run in the project environment.

Environment (isolated, outside the repository; learned_optimization 0.0.1 needs old jax)::

    python3.11 -m venv /work/refenv
    /work/refenv/bin/pip install "jax==0.4.13" "jaxlib==0.4.13" "numpy<2" "scipy<1.13" \\
        "dm-haiku==0.0.10" gin-config
    /work/refenv/bin/pip install -c <(printf 'jax==0.4.13\\njaxlib==0.4.13\\nnumpy<2\\n') \\
        "tensorflow-cpu==2.15.1" "optax==0.1.7" "chex==0.1.82"
    /work/refenv/bin/pip install --no-deps "learned_optimization==0.0.1" "flax==0.7.0" \\
        msgpack typing_extensions rich pyyaml

(tensorflow is imported by learned_optimization.summary; flax only for
``flax.struct`` / ``flax.metrics``.) Then, from the repository root::

    /work/refenv/bin/python tests/golden/make_adafac_golden.py

Contents (all float32 unless noted; ``T`` steps, leaves named by ``LEAVES``):

* ``theta/<path>``: meta-parameters in learned_optimization's layout
  (``theta/momentum_decays``, ..., ``theta/nn/~/w0``), random MLP weights *and* biases and
  nonzero decay offsets, so every part of theta matters;
* ``params0/<leaf>``: initial parameters;
* ``grads/<leaf>``: [T, *shape] gradient fed at each step; ``loss``: [T];
* ``params/<leaf>``: [T, *shape] parameters after each step;
* ``updates/<leaf>``: [T, *shape] ``params_after - params_before`` (computed in float64
  from the float32 values; parameters are O(0.02), so the rounding is ~1e-5 of a step);
* ``hidden_size``, ``hidden_layers``, ``step_mult``, ``exp_mult``, ``num_steps``: int/float
  scalars; ``versions``: a string.
"""

from __future__ import annotations

import os
import sys

import numpy as np

import jax

# learned_optimization 0.0.1 calls jax.tree_multimap, removed in jax 0.3.16.
jax.tree_multimap = jax.tree_util.tree_map

import jax.numpy as jnp  # noqa: E402
from learned_optimization.learned_optimizers import adafac_mlp_lopt  # noqa: E402

HIDDEN_SIZE = 32
HIDDEN_LAYERS = 2
NUM_STEPS = 6
SEED = 14
# A matrix, a bias, a rank-3 tensor, a tied-shape matrix and a scalar.
LEAVES = {"b": (7,), "s": (), "sq": (4, 4), "t3": (3, 4, 6), "w": (5, 7)}
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "adafac_mlp.npz")


def _flatten(prefix, tree, out):
    if isinstance(tree, dict) or hasattr(tree, "items"):
        for k in tree:
            _flatten(f"{prefix}/{k}", tree[k], out)
    else:
        out[prefix] = np.asarray(tree, np.float32)


def _grad(rng, shape):
    # Elementwise magnitudes spread over 1e-4 .. 1 (log-uniform), random signs: small
    # entries are where the epsilons of the second-moment features matter.
    mag = 10.0 ** rng.uniform(-4.0, 0.0, size=shape)
    return (np.sign(rng.standard_normal(size=shape)) * mag).astype(np.float32)


def main() -> int:
    lopt = adafac_mlp_lopt.AdafacMLPLOpt(hidden_size=HIDDEN_SIZE, hidden_layers=HIDDEN_LAYERS)
    theta = lopt.init(jax.random.PRNGKey(SEED))
    rng = np.random.default_rng(SEED)
    # Random biases and decay offsets on top of the reference init.
    theta = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), theta)
    flat = {}
    _flatten("theta", theta, flat)
    for k, v in flat.items():
        if k.split("/")[-1].startswith("b"):
            flat[k] = (0.3 * rng.standard_normal(v.shape)).astype(np.float32)
        elif k.endswith("_decays"):
            flat[k] = (0.1 * rng.standard_normal(v.shape)).astype(np.float32)

    def nested(flat_theta):
        out = {}
        for k, v in flat_theta.items():
            node = out
            parts = k.split("/")[1:]
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = jnp.asarray(v)
        return out

    theta = nested(flat)
    params = {k: (0.02 * rng.standard_normal(s)).astype(np.float32) for k, s in LEAVES.items()}
    grads = [{k: _grad(rng, s) for k, s in LEAVES.items()} for _ in range(NUM_STEPS)]
    losses = (1.0 + rng.uniform(size=NUM_STEPS)).astype(np.float32)

    opt = lopt.opt_fn(theta)
    state = opt.init({k: jnp.asarray(v) for k, v in params.items()}, num_steps=NUM_STEPS)
    update = jax.jit(opt.update)
    traj, ups = [], []
    prev = params
    for t in range(NUM_STEPS):
        state = update(state, {k: jnp.asarray(v) for k, v in grads[t].items()},
                       loss=jnp.asarray(losses[t]))
        cur = {k: np.asarray(v, np.float32) for k, v in opt.get_params(state).items()}
        traj.append(cur)
        ups.append({k: (cur[k].astype(np.float64) - prev[k].astype(np.float64))
                    for k in LEAVES})
        prev = cur

    out = dict(flat)
    for k in LEAVES:
        out[f"params0/{k}"] = params[k]
        out[f"grads/{k}"] = np.stack([g[k] for g in grads])
        out[f"params/{k}"] = np.stack([p[k] for p in traj])
        out[f"updates/{k}"] = np.stack([u[k] for u in ups]).astype(np.float32)
    out["loss"] = losses
    out["hidden_size"] = np.asarray(HIDDEN_SIZE)
    out["hidden_layers"] = np.asarray(HIDDEN_LAYERS)
    out["step_mult"] = np.asarray(lopt._step_mult, np.float64)
    out["exp_mult"] = np.asarray(lopt._exp_mult, np.float64)
    out["num_steps"] = np.asarray(NUM_STEPS)
    import importlib.metadata as md
    out["versions"] = np.asarray(
        f"learned_optimization=={md.version('learned_optimization')} "
        f"jax=={jax.__version__} python=={sys.version.split()[0]}")
    np.savez_compressed(OUT, **out)
    for k in LEAVES:
        rms = np.sqrt(np.mean(np.square(out[f"updates/{k}"]), axis=tuple(
            range(1, out[f"updates/{k}"].ndim))))
        print(f"{k:3s} {str(LEAVES[k]):10s} step rms per step: {np.array2string(rms, precision=6)}")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
