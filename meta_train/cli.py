"""Command line: ``python -m meta_train`` / ``mulo-meta-train``."""

from __future__ import annotations

import argparse
import sys

from meta_train.config import PRESETS, field_help, override


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m meta_train",
        description="Meta-train a μLO (or SP) learned optimizer with truncated ES / PES. "
                    "Writes checkpoints (orbax), TensorBoard logs and metrics.jsonl to --out; "
                    "load the result with lopt.load(OUT).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config overrides (any field, dotted, e.g. --es.num_pairs 16 --lo.mup false):\n"
               + "\n".join(f"  --{n:24s} {t:6s} default {v!r}" for n, t, v in field_help()))
    ap.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                    help="named config: smoke (seconds, tests), quick (minutes on 2 cores), "
                         "cpu (~25 min on 2 cores), paper (GPU-scale μLO recipe); the -sp twins train an SP LO on SP tasks")
    ap.add_argument("--out", default=None, help="run directory (default runs/<preset>)")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run in --out from its newest complete checkpoint")
    ap.add_argument("--stop-after", type=int, default=None,
                    help="stop after this many outer steps in this invocation (checkpointed)")
    ap.add_argument("--no-progress", action="store_true",
                    help="hide progress (shown as a bar on a terminal, otherwise as one line "
                         "per ~5%% of the run)")
    ap.add_argument("--print-config", action="store_true",
                    help="print the resolved config as JSON and exit")
    return ap


def parse(argv=None):
    ap = build_parser()
    args, rest = ap.parse_known_args(argv)
    cfg = PRESETS[args.preset]
    if len(rest) % 2:
        ap.error(f"option {rest[-1]} needs a value")
    for flag, value in zip(rest[::2], rest[1::2]):
        if not flag.startswith("--"):
            ap.error(f"unexpected argument {flag!r}")
        try:
            cfg = override(cfg, flag[2:].replace("-", "_"), value)
        except ValueError as e:
            ap.error(str(e))
    return args, cfg


def main(argv=None):
    args, cfg = parse(argv)
    if args.print_config:
        print(cfg.to_json())
        return 0
    from meta_train.data import DataNotFoundError
    from meta_train.loop import RunDirError, check_run_dir, run
    from meta_train.tasks import get_task
    for name in cfg.tasks + ((cfg.validate_task,) if cfg.validate_task else ()):
        try:
            get_task(name)
        except (ValueError, DataNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    out = args.out or f"runs/{args.preset}"
    try:
        check_run_dir(cfg, out, resume=args.resume)
        # only commands that run are recorded (the model card quotes them)
        _record_invocation(out, argv)
        res = run(cfg, out, resume=args.resume, progress=not args.no_progress,
                  stop_after=args.stop_after)
    except RunDirError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"stopped; continue with: python -m meta_train --preset {args.preset} "
              f"--out {out} --resume", file=sys.stderr)
        return 130
    m = res["metrics"]
    print(f"done: step {res['step']}, meta-loss {m.get('meta_loss', float('nan')):.4f}; "
          f"checkpoint in {out}/checkpoints (load with lopt.load({str(out)!r}))")
    return 0


def _record_invocation(out, argv):
    """Appends the command line and commit to ``<out>/invocations.jsonl`` (for model cards)."""
    import json
    import shlex
    import time
    from pathlib import Path

    from eval.report import _commit
    Path(out).mkdir(parents=True, exist_ok=True)
    args = sys.argv[1:] if argv is None else list(argv)
    with open(Path(out) / "invocations.jsonl", "a") as f:
        f.write(json.dumps({"time": time.time(), "commit": _commit(),
                            "command": "python -m meta_train " + " ".join(
                                shlex.quote(a) for a in args)}) + "\n")


if __name__ == "__main__":
    sys.exit(main())
