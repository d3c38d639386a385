"""Command line: ``python -m eval`` / ``mulo-eval``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def _baseline_names():
    from lopt.baselines import BASELINES
    return BASELINES


def _positive_int(option: str):
    """An argparse ``type`` for ``option``: a whole number >= 1, else one error line (which
    argparse prefixes with the option's name)."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = 0
        if n < 1 or str(n) != text.strip():
            raise argparse.ArgumentTypeError(f"takes a whole number of at least 1, got {text!r}")
        return n
    return parse


def _multipliers(text: str) -> tuple[int, ...]:
    """``--wider``: comma-separated whole multipliers >= 1 (``2,4``), else one error line."""
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not parts or not all(t.isdigit() and int(t) >= 1 for t in parts):
        raise argparse.ArgumentTypeError(
            f"takes comma-separated whole multipliers of at least 1 (e.g. 2,4), got {text!r}")
    return tuple(int(t) for t in parts)


def _one_line_cache_warnings() -> None:
    """Cache warnings (a damaged or mismatched cell file, recomputed) as one ``warning:``
    line naming the file, not Python's two-line source-location form."""
    import warnings

    from eval.cache import CacheWarning
    default = warnings.formatwarning

    def fmt(message, category, filename, lineno, line=None):
        if issubclass(category, CacheWarning):
            return f"warning: {message}\n"
        return default(message, category, filename, lineno, line)
    warnings.formatwarning = fmt


def _parser() -> argparse.ArgumentParser:
    from eval.suite import AXES
    ap = argparse.ArgumentParser(
        prog="python -m eval",
        description="Run the generalization suite for a learned optimizer: held-out tasks "
                    "(wider, deeper, longer, other data, CNNs, transformers) next to "
                    "baselines tuned per task. Writes results.json, results.csv, report.md and "
                    "PNG plots to --out; finished cells are cached and never recomputed. "
                    "Several processes may share one --out, e.g. one per core (`taskset -c 0 "
                    "python -m eval ...` and `taskset -c 1 python -m eval ...`, same "
                    "arguments): each takes the groups no other is computing, waits for the "
                    "rest, and writes the whole report.")
    ap.add_argument("--lo", required=True, action="append",
                    help="learned optimizer: a meta-training run directory, a checkpoint "
                         "directory, or a shipped checkpoint name; optionally LABEL=PATH. "
                         "Repeat to compare several (e.g. a μLO and an SP LO). dev and full "
                         "fix their cells; in smoke, quick and paper the first one's "
                         "meta-training config defines the cells, so put a fixed reference "
                         "first (e.g. --lo mulo-cpu --lo runs/variant) to compare variants on "
                         "the same cells")
    ap.add_argument("--suite", default="quick",
                    choices=["smoke", "quick", "dev", "full", "paper"],
                    help="smoke (seconds, tests), quick (minutes on 2 cores), dev (7 fixed "
                         "held-out cells, MLP, CNN and LM, sharing no task or seed with full, "
                         "each LO next to its untrained start and both tuned AdamW forms: for "
                         "choosing between LO variants; reuse one --out so the baselines are "
                         "computed once), full (the verdict; hours), paper (GPU scale)")
    ap.add_argument("--out", default=None,
                    help="output directory (default runs/eval-<suite>); not a meta-training "
                         "run's directory (use e.g. RUN/eval)")
    ap.add_argument("--baselines", default=None,
                    help="comma-separated baselines to tune and compare (default: the suite's; "
                         "choices: " + ", ".join(sorted(_baseline_names())) + ")")
    ap.add_argument("--wider", default=None, type=_multipliers,
                    help="override the suite's width multipliers: whole numbers of at least 1, "
                         "e.g. 2,4 (relative to the widest meta-training width; not for dev "
                         "and full, whose cells are fixed)")
    ap.add_argument("--axes", default=None,
                    help="comma-separated subset of the axes to run: " + ", ".join(AXES)
                         + " (default: all the suite has); cached cells are shared, so a later "
                         "run of all axes with the same --out reuses them")
    ap.add_argument("--transformer", default=None,
                    help="override the suite's transformer cells: comma-separated LM task "
                         "names, e.g. lm-fortunes-d64-l2,lm-fortunes-d64-l6 (the full suite's "
                         "d512 cell costs ~2 s per step and run on one core)")
    ap.add_argument("--schedule", default=None, choices=["constant", "cosine"],
                    help="LR schedule of every tuned baseline: constant, or cosine (linear "
                         "warmup over 5%% of the steps, cosine decay to 0.1x the peak LR; the "
                         "peak is tuned over the baseline's grid; rows are named <name>-cosine)."
                         " Default: each baseline's own (adamw-cosine is always cosine)")
    ap.add_argument("--seeds", type=_positive_int("--seeds"), default=None,
                    help="override the number of report seeds, at least 1 (the baselines tune "
                         "on the suite's seed base, 0, or 100 in dev, and report on the next n)")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ap.add_argument("--cached-only", action="store_true",
                    help="train nothing: report the rows already cached in --out/cells (e.g. "
                         "while the suite still runs elsewhere) and list the ones not run yet")
    ap.add_argument("--group-runs", type=_positive_int("--group-runs"), default=None,
                    metavar="N",
                    help="at most N runs (LRs x seeds) per vmapped group: a tuning sweep is "
                         "split into groups of whole LRs, and an LR with more than N seeds "
                         "(report seeds, an LO's runs) into groups of seeds, each cached on its "
                         "own, so a killed run keeps its finished groups, a group needs less "
                         "memory and processes sharing --out share its groups (default: a "
                         "whole sweep per group)")
    ap.add_argument("--shard", default=None, metavar="I/N",
                    help="run only part I of N of the suite's cells (I = 0..N-1), e.g. on N "
                         "machines with --shard 0/N ... --shard N-1/N, each with its own --out; "
                         "cells that share a μTransfer LR stay in one part. Join the parts "
                         "with `python -m eval.merge OUT0 OUT1 ... --out MERGED`")
    return ap


def _overrides(ap: argparse.ArgumentParser, args) -> dict:
    """The suite fields the command line overrides; a bad value exits with one line."""
    from eval.suite import AXES, SUITES
    overrides = {}
    if args.wider is not None:
        if SUITES[args.suite].cells:
            ap.error(f"--wider: the {args.suite} suite's cells are fixed; pick them with "
                     "--axes, or use --suite quick to derive wider cells from the LO")
        overrides["wider"] = args.wider
    if args.seeds is not None:
        overrides["seeds"] = args.seeds
    if args.transformer:
        lms = tuple(t.strip() for t in args.transformer.split(",") if t.strip())
        bad = [t for t in lms if not t.startswith("lm-")]
        if bad:
            ap.error(f"--transformer takes LM task names (lm-...), got {bad[0]!r}")
        overrides["transformer"] = lms
    if args.schedule:
        overrides["schedule"] = args.schedule
    if args.axes:
        axes = tuple(a.strip() for a in args.axes.split(",") if a.strip())
        bad = [a for a in axes if a not in AXES]
        if bad:
            ap.error(f"unknown axis {bad[0]!r} in --axes; choose from {', '.join(AXES)}")
        overrides["axes"] = axes
    return overrides


def main(argv=None):
    ap = _parser()
    args = ap.parse_args(argv)
    _one_line_cache_warnings()
    from eval.shard import ShardError, parse_shard
    try:
        shard = parse_shard(args.shard) if args.shard is not None else None
    except ShardError as e:
        ap.error(str(e))
    import lopt
    from eval.report import OutError, check_out, publish
    from meta_train.data import DataError, DataNotFoundError
    from eval.suite import SuiteError, run_suite
    out = Path(args.out or f"runs/eval-{args.suite}")
    try:
        check_out(out)
        overrides = _overrides(ap, args)
        doc = run_suite(args.lo, args.suite, out, progress=not args.no_progress,
                        overrides=overrides,
                        baselines=tuple(b for b in (args.baselines or "").split(",") if b)
                        or None, cached_only=args.cached_only, group_runs=args.group_runs,
                        shard=shard,
                        log=lambda line: print(line, file=sys.stderr, flush=True))
    except (lopt.CheckpointError, DataNotFoundError, DataError, SuiteError, OutError,
            ShardError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    publish(doc, out, "python -m eval " + " ".join(shlex.quote(a) for a in
                                                   (argv or sys.argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
