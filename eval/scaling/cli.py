"""The ``python -m eval.scaling`` command line: run or refit the scaling-law study (its
help is the package docstring)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

import eval.scaling as _pkg
from eval.scaling.fit import alpha_table
from eval.scaling.report import write_outputs
from eval.scaling.study import VARIANTS, Variant, run_study


def main(argv=None) -> int:
    """Runs the command line on ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    ap = argparse.ArgumentParser(prog="python -m eval.scaling", description=_pkg.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="quick", choices=sorted(VARIANTS),
                    help="smoke (seconds, tests), quick (minutes on 2 cores), full (the study)")
    ap.add_argument("--lo", action="append", default=[],
                    help="a trained learned optimizer to include (repeatable)")
    ap.add_argument("--out", default=None, help="output directory (default runs/scaling-<v>)")
    ap.add_argument("--refit", default=None, metavar="SCALING_JSON",
                    help="recompute the alpha table and plots from a saved scaling.json "
                         "(no training) with this version's fit range")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = ap.parse_args(argv)
    import lopt
    out = Path(args.out or f"runs/scaling-{args.variant}")
    try:
        if args.refit:
            doc = json.loads(Path(args.refit).read_text())
            setup = dict(doc["setup"])
            setup.setdefault("fit_max_n", VARIANTS[doc["variant"]].fit_max_n)
            setup = {k: tuple(v) if isinstance(v, list) else v for k, v in setup.items()}
            var = Variant(**setup)
            doc.update(setup=dataclasses.asdict(var), alpha=alpha_table(doc["raw"], var),
                       refit_of=doc.get("command"))
        else:
            doc = run_study(args.variant, out, args.lo, progress=not args.no_progress)
    except (lopt.CheckpointError, FileNotFoundError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    files = write_outputs(doc, out, "python -m eval.scaling " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])))
    print((out / "scaling.md").read_text())
    print(f"wrote {out}/" + ", ".join(files))
    return 0
