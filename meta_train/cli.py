"""Command line: ``python -m meta_train`` / ``mulo-meta-train``."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from meta_train.config import PRESETS, apply_overrides, field_help


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m meta_train",
        description="Meta-train a μLO (or SP) learned optimizer with truncated ES / PES. "
                    "Writes checkpoints (orbax), TensorBoard logs and metrics.jsonl to --out; "
                    "load the result with lopt.load(OUT).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config overrides (any field, dotted, e.g. --es.num_pairs 16 --lo.mup false):\n"
               + "\n".join(f"  --{n:24s} {t:6s} default {v!r}" for n, t, v in field_help()))
    ap.add_argument("--preset", default=None, choices=sorted(PRESETS),
                    help="named config (default quick): smoke (seconds, tests), quick (minutes "
                         "on 2 cores), cpu (~25 min on 2 cores), paper (GPU-scale μLO recipe); "
                         "the -sp twins train an SP LO on SP tasks")
    ap.add_argument("--out", default=None, help="run directory (default runs/<preset>)")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run in --out from its newest complete checkpoint; "
                         "without --preset the config is read from the run, and overrides "
                         "apply to it (--outer_steps N extends a run); fails when --out "
                         "holds no run")
    ap.add_argument("--resume-or-start", action="store_true",
                    help="like --resume when --out holds a run, else start a new one there")
    ap.add_argument("--stop-after", type=_positive_int, default=None, metavar="N",
                    help="stop after this many outer steps in this invocation (checkpointed)")
    ap.add_argument("--no-progress", action="store_true",
                    help="hide progress (shown as a bar on a terminal, otherwise as one line "
                         "per ~5%% of the run)")
    ap.add_argument("--print-config", action="store_true",
                    help="print the resolved config as JSON and exit")
    ap.add_argument("--start-only", action="store_true",
                    help="write the theta the run would start from (before any meta-update) "
                         "to --out/lopt.json with the config, and exit: the config's "
                         "untrained learned optimizer, loadable with lopt.load and "
                         "python -m eval --lo (e.g. a hand-set variant for an ablation)")
    g = ap.add_argument_group(
        "multi-process (docs/scale-out.md)",
        "run the same command in every process; process 0 alone writes --out")
    g.add_argument("--distributed", action="store_true",
                   help="join a multi-process run with jax.distributed.initialize(); without "
                        "the options below jax reads the cluster from the environment "
                        "(SLURM, Open MPI, JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                   help="address of process 0's coordination service (implies --distributed)")
    g.add_argument("--num-processes", type=int, default=None, metavar="N",
                   help="number of processes in the run (implies --distributed)")
    g.add_argument("--process-id", type=int, default=None, metavar="I",
                   help="this process's id, 0..N-1 (implies --distributed)")
    g.add_argument("--heartbeat-timeout", type=int, default=None, metavar="S",
                   help="seconds without heartbeats before jax declares a process dead and "
                        "stops the run (default 20)")
    return ap


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def parse(argv=None):
    """Returns (args, config). With ``--resume`` (or ``--resume-or-start`` on a run) and no
    ``--preset``, the config is the run's own with the overrides applied to it."""
    ap = build_parser()
    args, rest = ap.parse_known_args(argv)
    # --key=value as well as --key value
    rest = [part for a in rest
            for part in (a.split("=", 1) if a.startswith("--") and "=" in a else [a])]
    if len(rest) % 2:
        ap.error(f"option {rest[-1]} needs a value")
    pairs = []
    for flag, value in zip(rest[::2], rest[1::2]):
        if not flag.startswith("--"):
            ap.error(f"unexpected argument {flag!r}")
        pairs.append((flag[2:].replace("-", "_"), value))
    if args.out is None:
        args.out = f"runs/{args.preset or 'quick'}"
    from meta_train.loop import RunDirError, load_run_config, saved_config
    resuming = args.resume or (args.resume_or_start and saved_config(args.out) is not None)
    args.resume = resuming
    base = PRESETS[args.preset or "quick"]
    if resuming and args.preset is None:
        try:
            base = load_run_config(args.out)
        except RunDirError as e:
            ap.exit(2, f"error: {e}\n")
    try:
        cfg = apply_overrides(base, pairs)
    except ValueError as e:
        ap.error(str(e))
    return args, cfg


def _main(argv=None):
    args, cfg = parse(argv)
    if args.print_config:
        print(cfg.to_json())
        return 0
    if args.start_only:
        return _write_start(cfg, args.out)
    from meta_train import distributed as dist
    if (args.distributed or args.coordinator is not None or args.num_processes is not None
            or args.process_id is not None):
        try:
            dist.initialize(args.coordinator, args.num_processes, args.process_id,
                            heartbeat_timeout_s=args.heartbeat_timeout
                            or dist.HEARTBEAT_TIMEOUT_S)
        except dist.DistributedError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"distributed run: {dist.describe()}", file=sys.stderr)
    from lopt.io.checkpoint import CheckpointError
    from meta_train.data import DataNotFoundError
    from meta_train.loop import (Interrupted, RunDirError, check_run_dir, hold_run_dir,
                                 resume_command, run, saved_config)
    from meta_train.tasks import get_task
    for name in cfg.tasks + ((cfg.validate_task,) if cfg.validate_task else ()):
        try:
            get_task(name)
        except (ValueError, DataNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    out = args.out
    given = sys.argv[1:] if argv is None else list(argv)
    held = contextlib.ExitStack()

    def check():
        if args.resume and saved_config(out) is None:
            check_run_dir(cfg, out, resume=True)    # raises: no run, and nothing is created
        held.enter_context(hold_run_dir(out))      # before anything is written: one process
        check_run_dir(cfg, out, resume=args.resume)  # per run, for the life of the run
        # only commands that run are recorded (the model card quotes them)
        _record_invocation(out, argv)

    try:
        with held:
            dist.on_primary("cli-check", check, (RunDirError,))
            res = run(cfg, out, resume=args.resume, progress=not args.no_progress,
                      stop_after=args.stop_after)
    except dist.LostProcessError as e:
        print(f"error: {e}; continue with the same commands plus --resume", file=sys.stderr)
        dist.hard_exit(dist.LOST_EXIT)
    except (RunDirError, CheckpointError, dist.DistributedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        again = ("the same commands plus --resume" if dist.multi_process()
                 else resume_command(out, cfg, given))
        print(f"stopped; continue with: {again}", file=sys.stderr)
        code = 128 + e.signum if isinstance(e, Interrupted) else 130
        if getattr(e, "abandoned", False):   # a step still computing in a worker thread:
            sys.stdout.flush()              # exit without waiting for it
            sys.stderr.flush()
            os._exit(code)
        return code
    except OSError as e:     # a full disk, a file system gone read-only
        what = f"{e.strerror or type(e).__name__}" + (f": {e.filename}" if e.filename else "")
        print(f"error: cannot write the run ({what}); free space or fix the file system, then "
              f"continue with: {resume_command(out, cfg, given)}", file=sys.stderr)
        sys.stdout.flush()      # orbax's failed background writers may still be running (and
        sys.stderr.flush()      # print): exit without waiting for them
        os._exit(1)
    m = res["metrics"]
    # a resume of a finished run computes no step: no meta-loss to show (not a "nan")
    loss = f", meta-loss {m['meta_loss']:.4f}" if "meta_loss" in m else " (no step left to run)"
    print(f"done: step {res['step']}{loss}; checkpoint in {out}/checkpoints (load with "
          f"lopt.load({str(out)!r}))")
    return 0


def _write_start(cfg, out) -> int:
    """``--start-only``: the run's start theta (``MetaTrainer.start_theta``) as ``OUT/lopt.json``
    with meta ``{"step": 0, "config": ...}``; refuses a directory that holds anything."""
    from pathlib import Path

    import lopt
    from meta_train.loop import start_theta
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        print(f"error: --out {out} is not empty; --start-only writes a new directory",
              file=sys.stderr)
        return 2
    try:
        theta = start_theta(cfg)
    except (lopt.CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    lopt.save(out, theta, cfg.lo, meta={"step": 0, "config": cfg.to_dict()})
    print(f"wrote {out}/lopt.json: the untrained start of this config (load with "
          f"lopt.load({str(out)!r}))")
    return 0


def _record_invocation(out, argv):
    """Appends the command line and commit to ``<out>/invocations.jsonl`` (for model cards)."""
    import json
    import shlex
    import time
    from pathlib import Path

    from lopt.io.provenance import commit as _commit, host
    Path(out).mkdir(parents=True, exist_ok=True)
    args = sys.argv[1:] if argv is None else list(argv)
    with open(Path(out) / "invocations.jsonl", "a") as f:
        f.write(json.dumps({"time": time.time(), "commit": _commit(), "host": host(),
                            "command": "python -m meta_train " + " ".join(
                                shlex.quote(a) for a in args)}) + "\n")


def main(argv=None) -> int:
    """The command line; in a multi-process run, an unexpected error ends this process at once
    (after its traceback), so the others stop with a line naming it instead of waiting."""
    try:
        return _main(argv)
    except Exception:
        from meta_train import distributed as dist
        if not dist.multi_process():
            raise
        import traceback
        traceback.print_exc()
        dist.hard_exit(1)


if __name__ == "__main__":
    sys.exit(main())
