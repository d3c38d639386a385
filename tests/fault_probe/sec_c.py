"""Section C: bad command-line and config input to ``python -m meta_train --preset smoke
--no-progress`` (a 90 s limit each). Expected: rc 2 with one ``error:`` line, unless the
row says the input is valid."""

from __future__ import annotations

from common import case, one_line_error

# (id, arguments, expected rc): rc 0 where the input is a valid run
CLI = [
    ("C01", ["--preset", "nope"], 2),
    ("C02", ["--tasks", "mlp-nope-w16"], 2),
    ("C03", ["--outer_steps", "-1"], 2),
    ("C04", ["--outer_steps", "0"], 2),
    ("C05", ["--es.num_pairs", "0"], 2),
    ("C06", ["--es.sigma", "-0.01"], 2),
    ("C07", ["--es.min_horizon", "50", "--es.max_horizon", "10"], 2),
    ("C08", ["--es.num_pairs", "abc"], 2),
    ("C09", ["--lo.mup", "maybe"], 2),
    ("C10", ["--es.nope", "3"], 2),
    ("C11", ["--outer_stepz", "3"], 2),
    ("C12", ["--tasks", ""], 2),
    ("C13", ["--tasks"], 2),
    ("C14", ["--checkpoint_every", "0"], 2),
    ("C15", ["--keep_checkpoints", "0"], 2),
    ("C16", ["--es.method", "foo"], 2),
    ("C17", ["--es.sigma", "nan"], 2),
    ("C18", ["--meta_lr", "-1"], 2),
    ("C19", ["--outer_steps", "1e3"], 2),
    ("C20", ["--stop-after", "0"], 2),
    ("C21", ["--validate_task", "mlp-nope"], 2),
    ("C22", ["--es.unroll_length", "100"], 0),    # > max_horizon 30: runs reset mid-unroll
    ("C23", ["--es.num_pairs", "-2"], 2),
    ("C24", ["--lo.time_features", "foo"], 2),
    ("C25", ["--tasks", "mlp-digits8-w16-d2,bogus"], 2),
    ("C26", ["--init_from", "/nonexistent/run"], 2),
    ("C27", ["--lo.hidden_size", "0"], 2),
    ("C28", ["--stop-after", "-3"], 2),
    ("C29", ["--es.unroll_length", "100000000", "--outer_steps", "2"], 2),
]


def _make(cid, args, rc):
    @case(cid, " ".join(repr(a) if a == "" else a for a in args))
    def f(ctx, rec):
        d = ctx.case_dir(cid)
        base = ["--no-progress", "--out", d / "run"]
        if args[0] != "--preset":
            base = ["--preset", "smoke", *base]
        r = ctx.mt(*base, *args, timeout=90)
        rec["r"] = {k: r[k] for k in ("rc", "last_line", "tracebacks", "wall_s")}
        if rc == 0:
            rec.check(r["rc"] == 0 and r["tracebacks"] == 0, "runs to the end", "bad")
        else:
            rec.check(r["rc"] != "timeout", "ends within 90 s", "bad")
            one_line_error(rec, r)
            rec.check(not (d / "run" / "checkpoints").exists(), "nothing trained")
    return f


for _cid, _args, _rc in CLI:
    _make(_cid, _args, _rc)
