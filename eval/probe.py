"""One task, a few settings, no tuning: how a learned optimizer or a baseline trains under
changed constants, e.g. an LO's μP base width or a baseline's options.

    python -m eval.probe --lo mulo-frac-cpu --task mlp-fmnist8-w1024-d3 --steps 500 \\
        --set mup_base=1 --set mup_base=512,depth_ref=2,step_mult=1.5625e-4
    python -m eval.probe --muadam --task mlp-fmnist8-w1024-d3 --steps 500 \\
        --set base=1,lr=0.1 --set base=512,lr=2e-3
    python -m eval.probe --baseline schatten --task lm-fortunes-d64-l2 \\
        --set lr=0.0959 --set lr=0.3,adam_lr=0.00959 --set lr=0.0959,fixed_p=inf

Each ``--set`` is one run per seed. LO settings are ``LOConfig`` fields applied to the
LO's own config (its theta unchanged). Baseline settings are ``lr`` (required) and keyword
arguments of the baseline's factory in ``lopt.BASELINES`` (``--muadam`` is ``--baseline
muadam``: ``base``, ``lr``); the task is trained as named, so pass the ``-sp`` variant for an SP
baseline. Prints the final train loss (mean of the last 5% of steps, as the suite reports it)
per setting and seed. The LO is built with the task's declared roles and ``mup_in="model"``,
as in the suite.

``warmup=F`` (LO or baseline) multiplies each update by a linear warmup from 0 over the first
``F`` of the run (at least one step; ``adamw-cosine``'s warmup at 0.05), composed after the
optimizer with ``optax.scale_by_schedule``. It changes no accumulator, so the LO sees the same
inputs as without it; only its steps scale.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time


def _parse_set(text: str) -> dict:
    out = {}
    for part in (p for p in text.split(",") if p.strip()):
        if "=" not in part:
            raise ValueError(f"--set {text!r}: write key=value[,key=value]")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _typed(config, key: str, value: str):
    fields = {f.name: f for f in dataclasses.fields(config)}
    if key not in fields:
        raise ValueError(f"unknown LOConfig field {key!r}; choose from {', '.join(fields)}")
    from meta_train.config import parse_value
    return parse_value(value, getattr(config, key))


def baseline_with(name: str, setting: dict, roles, num_steps: int):
    """Baseline ``name`` of ``lopt.BASELINES`` at ``setting["lr"]`` with the setting's other
    entries as keyword arguments of its factory, on the entry's own schedule."""
    import functools
    import inspect

    from lopt.baselines import BASELINES
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    if "lr" not in setting:
        raise ValueError(f"--set {','.join(f'{k}={v}' for k, v in setting.items()) or '(empty)'}"
                         f": {name} needs lr=")
    b = BASELINES[name]
    params = inspect.signature(b.make).parameters
    accepted = [p for p in params if p not in ("lr", "roles")]
    bad = sorted(set(setting) - set(accepted) - {"lr"})
    if bad:
        raise ValueError(f"{name} has no option {', '.join(bad)}; its options are lr and "
                         f"{', '.join(accepted) or 'nothing else'}")
    # typed like the factory's default (int, bool, str; a None default takes a float, "inf"
    # allowed), by the one parser of option values: "ture" is an error, not False
    from meta_train.config import parse_value
    kwargs = {k: parse_value(v, params[k].default) for k, v in setting.items() if k != "lr"}
    entry = dataclasses.replace(b, make=functools.partial(b.make, **kwargs)) if kwargs else b
    return entry.build(float(setting["lr"]), roles, num_steps=num_steps)


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"warmup={text!r}: must be a fraction of the run in [0, 1), "
                         "e.g. warmup=0.05") from None


def with_warmup(opt, fraction: float, num_steps: int):
    """``opt`` whose updates are scaled by a linear warmup from 0 over ``fraction`` of
    ``num_steps`` (at least one step); ``opt`` itself for fraction 0."""
    import optax
    if not 0 <= fraction < 1:
        raise ValueError(f"warmup={fraction!r}: must be a fraction of the run in [0, 1)")
    if fraction == 0:
        return opt
    steps = max(1, int(round(fraction * num_steps)))
    return optax.chain(opt, optax.scale_by_schedule(optax.linear_schedule(0.0, 1.0, steps)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.probe", description=__doc__.split("\n\n")[0])
    who = ap.add_mutually_exclusive_group(required=True)
    who.add_argument("--lo", help="a learned optimizer (shipped name, run or checkpoint dir)")
    who.add_argument("--baseline", help="a baseline of lopt.BASELINES instead of an LO")
    who.add_argument("--muadam", action="store_true", help="μAdam (--baseline muadam)")
    ap.add_argument("--task", required=True)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--seeds", default="1", help="comma-separated report seeds (default 1)")
    ap.add_argument("--set", action="append", default=[], dest="sets",
                    help="key=value[,key=value]: one setting (repeat for several)")
    args = ap.parse_args(argv)
    import jax
    import numpy as np

    import lopt
    from meta_train.data import DataNotFoundError
    from meta_train.inner import train
    from eval.suite import final_loss
    from meta_train.tasks import get_task
    try:
        task = get_task(args.task)
        seeds = [int(s) for s in args.seeds.split(",") if s]
        sets = [_parse_set(s) for s in (args.sets or [""])]
        warm = [_fraction(s.get("warmup", "0")) for s in sets]
        rest = [{k: v for k, v in s.items() if k != "warmup"} for s in sets]
        if args.lo:
            theta, config, _ = lopt.load_theta(args.lo)
            built = [lopt.make_from_config(theta, dataclasses.replace(
                config, **{k: _typed(config, k, v) for k, v in r.items()}),
                roles=task.roles, mup_in="model", num_steps=args.steps) for r in rest]
        else:
            name = "muadam" if args.muadam else args.baseline
            built = [baseline_with(name, r, task.roles, args.steps) for r in rest]
        opts = [(s, with_warmup(o, w, args.steps)) for s, o, w in zip(sets, built, warm)]
    except (ValueError, DataNotFoundError, lopt.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from lopt.baselines import BASELINES
    extra = task.extra_args(not args.lo and BASELINES["muadam" if args.muadam
                                                      else args.baseline].needs_activations)
    for s, opt in opts:
        run = jax.jit(lambda k, opt=opt: train(task, opt, key=k, num_steps=args.steps,
                                               extra_args=extra,
                                               pass_loss=bool(args.lo) and config.needs_loss))
        for seed in seeds:
            t = time.time()
            res = run(jax.random.key(seed))
            label = ",".join(f"{k}={v}" for k, v in s.items()) or "(as saved)"
            print(f"{args.task} {args.steps} steps seed {seed} {label}: final train loss "
                  f"{final_loss(np.asarray(res.losses)):.4f} ({time.time() - t:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
