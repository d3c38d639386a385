"""Speed benchmarks; every figure is a ratio measured in the same run (shared, noisy machine).

``python -m eval.bench`` reports:

* the μLO update vs ``optax.adamw``'s on the same ~1M-parameter MLP tree;
* the μLO update's achieved FLOP/s vs a plain float32 matmul of the LO's shape;
* the μLO update on a 1.91M-parameter MLP tree (64-1024-1024-768-10);
* every optimizer (μLO and each baseline of ``lopt.BASELINES``): update time on that tree and
  train-step time (forward + backward + update, compile excluded) on a task (``--task``;
  ``--optimizers`` picks the baselines), both relative to AdamW, plus optimizer-state bytes
  and XLA's compiled peak temporary memory. ``--only-optimizers --task
  mlp-fmnist8-w4096-d3 --train-steps 2 --optimizers muon`` prices the full suite's 32x
  wider cell per optimizer;
* ES/PES meta-training throughput (inner steps/s across the population, outer steps/min)
  for presets ``quick`` and ``cpu`` and for a reference configuration
  (MLP 64-128-128-10 on 8x8 digits, batch 128, 8 pairs, K=50, horizons 100-1000).

``--scale-out`` reports instead the outer steps/s of a preset (``--preset``, default
``quick``) for 1 process on 1 core, 2 processes on 1 core each (jax.distributed) and 1
process with 2 devices on 2 cores (:mod:`eval.bench_scale`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lopt
from lopt.learned import features as F

# MACs per element of the LO's MLP: 39*32 + 32*32 + 32*2 (the time features are folded
# into the first-layer bias, so 28 of the 39 inputs are multiplied per element).
LO_FLOPS_PER_ELEMENT = 2 * (F.NUM_TENSOR_FEATURES * 32 + 32 * 32 + 32 * 2)


def _time(fn, *args, reps=10):
    out = fn(*args)
    jax.block_until_ready(out)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def mlp_tree(dims, key=0):
    keys = jax.random.split(jax.random.PRNGKey(key), len(dims) - 1)
    return {f"layer_{i}": {"w": jax.random.normal(k, (a, b)) / np.sqrt(a),
                           "b": jnp.zeros((b,))}
            for i, (k, a, b) in enumerate(zip(keys, dims[:-1], dims[1:]))}


def bench_update(dims):
    params = mlp_tree(dims)
    n = sum(x.size for x in jax.tree.leaves(params))
    grads = jax.tree.map(lambda p: 0.01 * jnp.cos(p), params)
    lo = lopt.make(lopt.init_theta(jax.random.PRNGKey(0)))
    adam = optax.adamw(1e-3)
    lo_up = jax.jit(lo.update)
    ad_up = jax.jit(adam.update)
    t_lo = _time(lo_up, grads, lo.init(params), params)
    t_ad = _time(ad_up, grads, adam.init(params), params)
    x = jax.random.normal(jax.random.PRNGKey(1), (n, 32))
    w = jax.random.normal(jax.random.PRNGKey(2), (32, 32))
    mm = jax.jit(lambda x, w: x @ w)
    t_mm = _time(mm, x, w)
    mm_flops = 2 * n * 32 * 32 / t_mm
    lo_flops = LO_FLOPS_PER_ELEMENT * n / t_lo
    return {"params": int(n), "lo_ms": 1e3 * t_lo, "adamw_ms": 1e3 * t_ad,
            "lo_over_adamw": t_lo / t_ad, "lo_gflops": lo_flops / 1e9,
            "matmul_gflops": mm_flops / 1e9, "lo_over_matmul_flops": lo_flops / mm_flops}


def bench_es(name, tasks, es_cfg, outer=3, lo_config=lopt.MULO):
    from meta_train import es as ES
    from meta_train.tasks import get_task
    ts = [get_task(t) for t in tasks]
    theta = lopt.init_theta(jax.random.PRNGKey(0), lo_config)
    total = 0.0
    for t in ts:
        prob = ES.lo_problem(t, lambda th, t=t: lopt.make(th, roles=t.roles, mup_in="model",
                                                          config=lo_config))
        st = ES.init_es_state(prob, theta, jax.random.PRNGKey(1), es_cfg)
        g, st, _ = ES.es_gradient(theta, st, jax.random.PRNGKey(2), t.data, problem=prob,
                                  cfg=es_cfg)
        jax.block_until_ready(g)
        t0 = time.perf_counter()
        for i in range(outer):
            g, st, _ = ES.es_gradient(theta, st, jax.random.PRNGKey(3 + i), t.data,
                                      problem=prob, cfg=es_cfg)
        jax.block_until_ready(g)
        total += (time.perf_counter() - t0) / outer
    inner = len(ts) * 2 * es_cfg.num_pairs * es_cfg.unroll_length
    return {"config": name, "s_per_outer_step": total, "outer_steps_per_min": 60 / total,
            "inner_steps_per_s": inner / total}


def _mlp_roles(params):
    n = len(params)
    return {k: {"w": "input" if i == 0 else ("output" if i == n - 1 else "hidden"),
                "b": "vector"} for i, k in enumerate(sorted(params, key=lambda s: int(s[6:])))}


def _nbytes(tree):
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


# The compact learned optimizer's rows (``lopt.learned.compact``): hidden 8, normalized
# direction, no magnitude head; with and without Muon's orthogonalization of hidden matrices.
COMPACT_ROWS = {
    "μLO-compact": lopt.COMPACT,
    "μLO-compact-orth": dataclasses.replace(lopt.COMPACT, orthogonalize=True),
}


def bench_optimizers(dims=(784, 1024, 256, 10), task_name="mlp-fmnist8-w512-d3", steps=20,
                     train_steps=50, names=None, los=()):
    """Per-optimizer update time, train-step time, state memory; ratios to AdamW. ``los``:
    learned optimizers to add as rows (shipped names or checkpoint paths, ``lopt.load``),
    each told the run length ``train_steps``."""
    from lopt.baselines import BASELINES
    from meta_train.inner import train
    from meta_train.tasks import get_task
    params = mlp_tree(list(dims))
    roles = _mlp_roles(params)
    grads = jax.tree.map(lambda p: 0.01 * jnp.cos(p), params)
    acts = {k: {"w": jax.random.normal(jax.random.PRNGKey(i), (128, v["w"].shape[0])),
                "b": None} for i, (k, v) in enumerate(params.items())}
    task = get_task(task_name)
    theta = lopt.init_theta(jax.random.PRNGKey(0))
    opts = {"adamw": (BASELINES["adamw"].make(1e-3, roles), False,
                      BASELINES["adamw"].make(1e-3, task.roles))}
    opts["μLO"] = (lopt.make(theta, roles=roles, mup_in="model"), False,
                    lopt.make(theta, roles=task.roles, mup_in="model"))
    for label, cfg in COMPACT_ROWS.items():      # lopt.learned.compact, random theta
        th = lopt.init_theta(jax.random.PRNGKey(0), cfg)
        opts[label] = (lopt.make(th, roles=roles, mup_in="model", config=cfg), False,
                       lopt.make(th, roles=task.roles, mup_in="model", config=cfg))
    for path in los:        # trained learned optimizers as shipped, e.g. their config's features
        opts[str(path)] = (lopt.load(path, roles=roles, mup_in="model", num_steps=train_steps),
                           False, lopt.load(path, roles=task.roles, mup_in="model",
                                            num_steps=train_steps))
    for name, b in BASELINES.items():
        if name != "adamw" and (names is None or name in names):
            opts[name] = (b.make(1e-3, roles), b.needs_activations, b.make(1e-3, task.roles))
    if names is None or "schatten" in names:
        # Schatten-p with p pinned to inf is Muon's maths with no criterion: the difference to
        # "schatten" is the adaptive part's cost (plus the p it picks)
        from lopt.baselines.schatten import adaptive_schatten
        opts["schatten[p=inf]"] = (adaptive_schatten(1e-3, roles, fixed_p=float("inf")), False,
                                   adaptive_schatten(1e-3, task.roles, fixed_p=float("inf")))
    rows = []
    for name, (opt, needs_acts, task_opt) in opts.items():
        extra = {"activations": acts} if needs_acts else {}
        up = jax.jit(lambda g, s, p, opt=opt, extra=extra: opt.update(g, s, p, **extra))
        state = opt.init(params)
        mem = up.lower(grads, state, params).compile().memory_analysis()
        _, state = up(grads, state, params)
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        for _ in range(steps):     # state carried, so periodic work (Schatten's p) amortizes
            _, state = up(grads, state, params)
        jax.block_until_ready(state)
        t_up = (time.perf_counter() - t0) / steps
        xa = task.extra_args(needs_acts)
        run = jax.jit(lambda k, o=task_opt, xa=xa: train(task, o, key=k, num_steps=train_steps,
                                                         extra_args=xa).losses)
        jax.block_until_ready(run(jax.random.PRNGKey(0)))       # compile
        t0 = time.perf_counter()
        jax.block_until_ready(run(jax.random.PRNGKey(1)))
        t_step = (time.perf_counter() - t0) / train_steps
        rows.append({"optimizer": name, "update_ms": 1e3 * t_up, "train_step_ms": 1e3 * t_step,
                     "state_mb": _nbytes(state) / 2 ** 20,
                     "temp_mb": (mem.temp_size_in_bytes / 2 ** 20) if mem else float("nan")})
    for r in rows:
        r["update_vs_adamw"] = r["update_ms"] / rows[0]["update_ms"]
        r["train_step_vs_adamw"] = r["train_step_ms"] / rows[0]["train_step_ms"]
    from lopt.baselines.schatten import criterion
    hidden = [(grads[k]["w"], acts[k]["w"]) for k in params if roles[k]["w"] == "hidden"]
    crit = jax.jit(lambda hs: [criterion(g, a) for g, a in hs])
    t_crit = _time(crit, hidden)
    return {"params": int(sum(x.size for x in jax.tree.leaves(params))), "task": task_name,
            "schatten_criterion_ms": 1e3 * t_crit,
            "task_params": task.num_params(), "rows": rows}


def print_optimizer_table(res):
    print(f"\nOptimizers: update on MLP tree ({res['params']:,} params), train step on "
          f"{res['task']} ({res['task_params']:,} params, batch 128); compile excluded")
    print("| optimizer | update ms | x AdamW | train step ms | x AdamW | state MiB | peak temp MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        print(f"| {r['optimizer']} | {r['update_ms']:.2f} | {r['update_vs_adamw']:.1f} | "
              f"{r['train_step_ms']:.2f} | {r['train_step_vs_adamw']:.1f} | "
              f"{r['state_mb']:.1f} | {r['temp_mb']:.1f} |")
    muon = next((r for r in res["rows"] if r["optimizer"] == "muon"), None)
    if muon and "schatten_criterion_ms" in res:
        c = res["schatten_criterion_ms"]
        print(f"Schatten-p criterion (all hidden layers, batch-128 activations): {c:.2f} ms per "
              f"call = {100 * c / muon['update_ms']:.1f}% of a Muon update; every 50 steps: "
              f"{2 * c / muon['update_ms']:.2f}% amortized")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m eval.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-es", action="store_true", help="skip the ES throughput figures")
    ap.add_argument("--only-optimizers", action="store_true",
                    help="only the per-optimizer table (update, train step, memory)")
    ap.add_argument("--json", default=None, help="also write every figure to this JSON file")
    ap.add_argument("--task", default="mlp-fmnist8-w512-d3",
                    help="task of the optimizer table's train-step column, e.g. "
                         "mlp-fmnist8-w4096-d3 for the full suite's 32x wider cell")
    ap.add_argument("--train-steps", type=int, default=50, metavar="N",
                    help="timed train steps per optimizer (default 50; 2 at width 4096)")
    ap.add_argument("--optimizers", default=None, metavar="A,B",
                    help="baselines of the optimizer table besides AdamW and the μLO "
                         "(default: every one in lopt.BASELINES)")
    ap.add_argument("--lo", action="append", default=[], metavar="PATH",
                    help="also time this learned optimizer (shipped name, run or checkpoint "
                         "directory; repeatable), told the run length --train-steps")
    ap.add_argument("--scale-out", action="store_true",
                    help="only the scale-out throughput: outer steps/s of --preset for 1 "
                         "process on 1 core, 2 processes on 1 core each, 1 process with 2 "
                         "devices on 2 cores (docs/scale-out.md)")
    ap.add_argument("--preset", default="quick",
                    help="meta-training preset of --scale-out (default quick)")
    ap.add_argument("--steps", type=int, default=10, metavar="N",
                    help="timed outer steps per --scale-out configuration, after 2 untimed "
                         "(default 10)")
    return ap


def main(argv=None):
    ap = _parser()
    args = ap.parse_args(argv)
    if args.scale_out:
        return _scale_out(ap, args)
    from lopt.baselines import BASELINES
    names = None if args.optimizers is None else [n.strip() for n in
                                                  args.optimizers.split(",") if n.strip()]
    unknown = sorted(set(names or ()) - set(BASELINES))
    if unknown:
        ap.error(f"--optimizers: unknown {', '.join(unknown)}; choose from "
                 f"{', '.join(BASELINES)}")
    if args.train_steps < 1:
        ap.error(f"--train-steps must be at least 1, got {args.train_steps}")
    from meta_train.data import DataNotFoundError
    from meta_train.tasks import get_task
    try:
        get_task(args.task)
    except (ValueError, DataNotFoundError) as e:
        ap.error(f"--task {args.task}: {e}")
    import lopt
    for path in args.lo:
        try:
            lopt.load_theta(path)
        except lopt.CheckpointError as e:
            ap.error(f"--lo {path}: {e}")
    table = dict(task_name=args.task, train_steps=args.train_steps, names=names,
                 los=tuple(args.lo))
    report = {}
    if args.only_optimizers:
        report["optimizers"] = bench_optimizers(**table)
        print_optimizer_table(report["optimizers"])
        _dump(args.json, report)
        return 0
    print(f"devices: {jax.devices()}")
    for dims in ([784, 1024, 256, 10], [64, 1024, 1024, 768, 10]):
        r = bench_update(dims)
        report.setdefault("lo_update", []).append(r)
        print(f"LO update, MLP {dims} ({r['params']:,} params): {r['lo_ms']:.1f} ms vs "
              f"adamw {r['adamw_ms']:.2f} ms -> {r['lo_over_adamw']:.1f}x adamw; "
              f"{r['lo_gflops']:.1f} GFLOP/s vs matmul [n,32]x[32,32] "
              f"{r['matmul_gflops']:.1f} GFLOP/s -> {r['lo_over_matmul_flops']:.2f} of matmul")
    report["optimizers"] = bench_optimizers(**table)
    print_optimizer_table(report["optimizers"])
    if not args.skip_es:
        report["es"] = _es_rows()
    _dump(args.json, report)
    return 0


def _es_rows() -> list[dict]:
    """ES throughput of a reference config (with the classic and the compact μLO) and of the
    quick and cpu presets, printed and returned."""
    import lopt
    from meta_train.config import PRESETS
    from meta_train.es import ESConfig
    ref = ESConfig(method="pes", num_pairs=8, sigma=0.01, unroll_length=50, min_horizon=100,
                   max_horizon=1000)
    rows = [bench_es("reference: mlp 64-128-128-10 digits8, PES 8 pairs K=50",
                     ["mlp-digits8-w128-d2"], ref),
            bench_es("reference with the compact μLO (lopt.COMPACT)", ["mlp-digits8-w128-d2"],
                     ref, lo_config=lopt.COMPACT)]
    for p in ("quick", "cpu"):
        rows.append(bench_es(f"preset {p}", list(PRESETS[p].tasks), PRESETS[p].es))
    for r in rows:
        print(f"{r['config']}: {r['s_per_outer_step']:.2f} s/outer step, "
              f"{r['outer_steps_per_min']:.1f} outer steps/min, "
              f"{r['inner_steps_per_s']:.0f} inner steps/s")
    return rows


def _scale_out(ap, args) -> int:
    from eval.bench_scale import bench_scale_out, print_scale_out
    from meta_train.config import PRESETS
    if args.preset not in PRESETS:
        ap.error(f"--preset {args.preset}: unknown; choose from {', '.join(sorted(PRESETS))}")
    if PRESETS[args.preset].es.num_pairs % 2:
        ap.error(f"--preset {args.preset} has {PRESETS[args.preset].es.num_pairs} pairs; "
                 "two processes need an even number")
    if args.steps < 1:
        ap.error(f"--steps must be at least 1, got {args.steps}")
    try:
        r = bench_scale_out(args.preset, args.steps)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_scale_out(r)
    _dump(args.json, {"scale_out": r})
    return 0


def _dump(path, report):
    if path:
        import json
        with open(path, "w") as f:
            json.dump(report, f, indent=2, default=float)


if __name__ == "__main__":
    raise SystemExit(main())
