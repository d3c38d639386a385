"""The μP roles, multipliers and depths of the project's task models and Flax clients, as a
golden fixture (``tests/fixtures/task_roles.json``): role inference must keep giving these.

Written once by ``python -m tests.lopt.roles_golden`` with the role code of commit 6e9d6f2
(natural path order); the fixture records every model's leaves in creation order with their
shapes, so the test rebuilds each tree without data (in creation order and as jax rebuilds
it, sorted) and compares.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

import lopt
from meta_train import data as D
from meta_train import tasks as T

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "task_roles.json"
# (mup_base, depth_ref): the classic μLO and the shipped base-width μLOs (mulo-base-cpu,
# mulo-horizon-cpu)
LO_CONSTANTS = ((1.0, 0), (512.0, 2))


def model_names() -> list[str]:
    """Every registered task, the suite's fixed cells, and the width/depth cells the suites
    derive from the shipped LOs' meta-training tasks."""
    from eval.suite import SUITES
    names = set(T.TASKS)
    for spec in SUITES.values():
        names |= set(spec.transformer) | set(spec.lowrank) | set(spec.other_data)
    for w in (32, 64, 128, 256, 512, 1024, 2048, 4096):
        for d in (2, 3, 6, 15, 16):
            names.add(f"mlp-fmnist8-w{w}-d{d}")
    names |= {"mlp-fmnist8-w128-d15-sp", "mlp-fmnist8-w64-d6-sp", "lm-fortunes-d64-l6-sp"}
    return sorted(names)


def task_leaves(name: str) -> tuple[list, object]:
    """``(leaves in creation order, shape tree)`` of ``task.init``, data-free and without
    computing it (the order is read from the dict the init builds while it is traced)."""
    with mock.patch.object(D, "image_dataset", lambda n, r: D.Dataset(
            *_splits(), 10, "fake")), \
         mock.patch.object(D, "text_dataset", lambda n, c: D.Dataset(
            *_splits(), D.VOCAB, "fake")):
        task = T.get_task(name)
    seen = []

    def init(key):
        params = task.init(key)
        seen.append(ordered_leaves(params))
        return params
    shapes = jax.eval_shape(init, jax.random.key(0))
    return seen[0], shapes


def _splits():
    z = D.Split(jnp.zeros((1, 1)), jnp.zeros((1,), jnp.int32))
    return z, z


def client_params():
    from eval.clients import CNN, LM, MLP
    x = jnp.zeros((1, 64))
    tok = jnp.zeros((1, 32), jnp.int32)
    return {"client-mlp-w256": MLP(256).init(jax.random.key(0), x)["params"],
            "client-cnn-w32": CNN(32).init(jax.random.key(0), x)["params"],
            "client-lm-d64": LM(d=64).init(jax.random.key(0), tok)["params"]}


def ordered_leaves(tree, prefix=""):
    """``[(path, shape)]`` in the container's own order (dict insertion order)."""
    if hasattr(tree, "items"):
        out = []
        for k, v in tree.items():
            out += ordered_leaves(v, f"{prefix}/{k}" if prefix else str(k))
        return out
    return [(prefix, list(np.shape(tree)))]


def record(params, leaves=None) -> dict:
    """Leaves (creation order), inferred roles, multipliers and depth of one tree."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        roles = lopt.infer_roles(params)
        flat = lambda t: {lopt.mup.roles.path_str(p): v  # noqa: E731
                          for p, v in jax.tree_util.tree_flatten_with_path(t)[0]}
        out = {"leaves": leaves or ordered_leaves(params), "roles": flat(roles),
               "depth": lopt.mup.roles.model_depth(params, roles)}
        for base, depth_ref in LO_CONSTANTS:
            out[f"lr_mult/{base:g}/{depth_ref}"] = flat(lopt.lr_multipliers(
                params, roles, True, base=base, depth_ref=depth_ref))
            out[f"readout/{base:g}"] = flat(lopt.readout_multipliers(params, roles, True,
                                                                      base=base))
    return out


def main():
    models = {}
    for n in model_names():
        leaves, shapes = task_leaves(n)
        models[n] = record(shapes, leaves)
    models.update({n: record(p) for n, p in client_params().items()})
    FIXTURE.write_text("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v, sort_keys=True)}"
                                          for k, v in sorted(models.items())) + "\n}\n")
    print(f"wrote {len(models)} models to {FIXTURE}")


if __name__ == "__main__":
    main()
