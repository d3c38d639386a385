"""Section B: corrupt files. Each case damages a copy of stop8 (newest step 8; B23 and B24 a
copy of the finished ref20), then: lopt.load_theta(run), ``--resume`` to step 20 and the
bitwise check against ref20."""

from __future__ import annotations

import json
import os
import shutil
import warnings

from common import case, check_exact, checkpoint_steps, one_line_error, tree_state


def _biggest(step_dir):
    d = step_dir / "state" / "ocdbt.process_0" / "d"
    return max(d.iterdir(), key=lambda p: p.stat().st_size)


def _truncate(f):
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _random(f, n=None):
    f.write_bytes(os.urandom(n or max(f.stat().st_size, 64)))


def _xor(f, at, n=1, mask=0xFF):
    b = bytearray(f.read_bytes())
    for i in range(at, min(at + n, len(b))):
        b[i] ^= mask
    f.write_bytes(bytes(b))


def _garbage(f):
    f.write_bytes(b"\xff\xfe\x00garbage\x80" * 8)


def _step(run, s=8):
    return run / "checkpoints" / str(s)


def _corrupt(ctx, rec, cid, damage, base="stop8", expect_load_step=None, expect_resume=True):
    d = ctx.case_dir(cid)
    run = ctx.copy(base, d / "run")
    damage(run)
    b = ctx.bitwise(run)     # lopt.load_theta right after the damage
    rec["load"] = {"step": b.get("step"), "error": b.get("error"),
                   "warnings": b.get("warnings")}
    if expect_load_step is not None:
        rec.check(b.get("step") == expect_load_step and not b.get("error"),
                  f"lopt.load gives step {expect_load_step}", "bad")
    r = ctx.mt("--out", run, "--resume", "--no-progress")
    rec["resume"] = {"rc": r["rc"], "tracebacks": r["tracebacks"], "last_line": r["last_line"],
                     "resumed": [x[:300] for x in r["_stderr"].splitlines()
                                 if "resumed from" in x], "warnings": r["warnings"]}
    rec["checkpoints_after"] = checkpoint_steps(run)
    if expect_resume:
        rec.check(r["rc"] == 0 and "done: step 20" in r["_stdout"], "--resume reaches step 20",
                  "bad")
        rec.check(r["tracebacks"] == 0, "no traceback")
        check_exact(ctx, rec, run, metrics=cid not in ("B15", "B17"))
    return run, r


def _newest_damage(fn):
    return lambda run: fn(_step(run))


@case("B01", "Biggest ocdbt data file truncated to half")
def b01(ctx, rec):
    _corrupt(ctx, rec, "B01", _newest_damage(lambda s: _truncate(_biggest(s))))
    rec.check(any("instead" in x for x in rec["resume"]["resumed"]),
              "the fallback is announced")


@case("B02", "state/_METADATA overwritten with random bytes")
def b02(ctx, rec):
    _corrupt(ctx, rec, "B02", _newest_damage(lambda s: _random(s / "state" / "_METADATA")))


@case("B03", "Both manifest.ocdbt files deleted")
def b03(ctx, rec):
    def damage(run):
        for f in _step(run).rglob("manifest.ocdbt"):
            f.unlink()
    _, r = _corrupt(ctx, rec, "B03", damage)
    rec["event_loop_closed"] = r["_stderr"].count("Event loop is closed")
    rec.check(rec["event_loop_closed"] == 0, "no 'Event loop is closed' noise")


def _b05_damage(run):
    f = _biggest(_step(run))
    _xor(f, f.stat().st_size // 2, n=16)


@case("B05", "16 bytes XOR 0xFF in the middle of the biggest ocdbt data file (+ a sweep of "
             "one-byte flips)")
def b05(ctx, rec):
    _, r = _corrupt(ctx, rec, "B05", _b05_damage)
    rec.check(any("instead" in x for x in rec["resume"]["resumed"]),
              "the damaged step is not restored silently", "bad")
    rec["sweep"] = _flip_sweep(ctx, ctx.out / "cases" / "B05" / "sweep")
    rec.check(rec["sweep"]["silent_changed"] == 0,
              "no single-byte flip is restored silently as other numbers", "bad")


def _flip_sweep(ctx, d):
    """1-byte XOR 0xFF at 1/3 and 2/3 of each file under step 8's state/ (about 40 flips),
    each restored with the run's Checkpointer: silent (no warning, other numbers),
    fell back (a warning), or no effect (no warning, the same numbers)."""
    import dataclasses
    from meta_train.checkpointing import Checkpointer, state_digest
    from meta_train.config import PRESETS
    from meta_train.loop import MetaTrainer
    cfg = dataclasses.replace(PRESETS["smoke"], outer_steps=20, checkpoint_every=1)
    like = MetaTrainer(cfg).init_state()
    src = ctx.ref("stop8") / "checkpoints"
    ck = Checkpointer(src)
    want = state_digest(ck.restore(like))
    ck.close()
    files = sorted(p.relative_to(src / "8") for p in (src / "8" / "state").rglob("*")
                   if p.is_file() and p.stat().st_size > 0)
    counts = {"flips": 0, "silent_changed": 0, "fell_back": 0, "no_effect": 0, "errors": 0}
    silent = []
    for rel in files:
        for frac in (1, 2):
            if d.exists():
                shutil.rmtree(d)
            shutil.copytree(src, d)
            f = d / "8" / rel
            _xor(f, f.stat().st_size * frac // 3)
            counts["flips"] += 1
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                ck = Checkpointer(d)
                try:
                    got = ck.restore(like)
                except Exception:  # noqa: BLE001 - counted
                    counts["errors"] += 1
                    continue
                finally:
                    ck.close()
            fell = int(got["step"]) != 8 or any("instead" in str(x.message) for x in w)
            if fell:
                counts["fell_back"] += 1
            elif state_digest(got) != want:
                counts["silent_changed"] += 1
                silent.append(f"{rel}@{frac}/3")
            else:
                counts["no_effect"] += 1
    shutil.rmtree(d, ignore_errors=True)
    return {**counts, "silent": silent}


@case("B04", "state/ directory deleted")
def b04(ctx, rec):
    _corrupt(ctx, rec, "B04", _newest_damage(lambda s: shutil.rmtree(s / "state")))


@case("B06", "_CHECKPOINT_METADATA overwritten with random bytes")
def b06(ctx, rec):
    _corrupt(ctx, rec, "B06", _newest_damage(lambda s: _random(s / "_CHECKPOINT_METADATA")))


@case("B07", "Both commit_success.txt files deleted")
def b07(ctx, rec):
    def damage(run):
        for f in _step(run).rglob("commit_success.txt"):
            f.unlink()
    _corrupt(ctx, rec, "B07", damage)


@case("B08", "lopt.json truncated")
def b08(ctx, rec):
    _corrupt(ctx, rec, "B08", _newest_damage(lambda s: _truncate(s / "lopt.json")),
             expect_load_step=7)


@case("B09", "lopt.json replaced by non-UTF-8 bytes")
def b09(ctx, rec):
    _corrupt(ctx, rec, "B09", _newest_damage(lambda s: _garbage(s / "lopt.json")),
             expect_load_step=7)


@case("B10", "lopt.json deleted")
def b10(ctx, rec):
    _corrupt(ctx, rec, "B10", _newest_damage(lambda s: (s / "lopt.json").unlink()),
             expect_load_step=7)


@case("B11", "Step config.json overwritten with random bytes")
def b11(ctx, rec):
    _corrupt(ctx, rec, "B11", _newest_damage(lambda s: _random(s / "config.json", 300)))


@case("B12", "Top-level config.json truncated")
def b12(ctx, rec):
    _corrupt(ctx, rec, "B12", lambda run: _truncate(run / "config.json"))


@case("B13", "Top-level config.json replaced by non-UTF-8 bytes")
def b13(ctx, rec):
    _corrupt(ctx, rec, "B13", lambda run: _garbage(run / "config.json"))


@case("B14", "Top-level config.json deleted")
def b14(ctx, rec):
    _corrupt(ctx, rec, "B14", lambda run: (run / "config.json").unlink())


@case("B15", "metrics.jsonl cut mid-line (the step-8 line)")
def b15(ctx, rec):
    def damage(run):
        f = run / "metrics.jsonl"
        b = f.read_bytes()
        f.write_bytes(b[: len(b) - len(b.splitlines()[-1]) // 2 - 1])
    run, _ = _corrupt(ctx, rec, "B15", damage)
    from common import metric_steps
    steps = metric_steps(run)
    rec["metric_steps"] = steps
    rec.check(steps == [s for s in range(1, 21) if s != 8] or steps == list(range(1, 21)),
              "metrics hold 1..20 (the cut step-8 line at most is gone), no garbage")


@case("B16", "A non-UTF-8 garbage line appended to metrics.jsonl")
def b16(ctx, rec):
    def damage(run):
        with open(run / "metrics.jsonl", "ab") as f:
            f.write(b"\xff\xfe garbage \x80\n")
    _corrupt(ctx, rec, "B16", damage)


@case("B17", "metrics.jsonl deleted")
def b17(ctx, rec):
    run, _ = _corrupt(ctx, rec, "B17", lambda run: (run / "metrics.jsonl").unlink())
    from common import metric_steps
    steps = metric_steps(run)
    rec["metric_steps"] = steps
    rec.check(steps == list(range(9, 21)), "metrics then hold 9..20 (the deleted lines cannot "
              "come back)")


@case("B18", "All three steps' biggest data files truncated")
def b18(ctx, rec):
    def damage(run):
        for s in (6, 7, 8):
            _truncate(_biggest(_step(run, s)))
    d = ctx.case_dir("B18")
    run = ctx.copy("stop8", d / "run")
    damage(run)
    before = tree_state(run / "checkpoints")
    r = ctx.mt("--out", run, "--resume", "--no-progress")
    rec["resume"] = {k: r[k] for k in ("rc", "last_line", "tracebacks")}
    one_line_error(rec, r)
    rec.check(tree_state(run / "checkpoints") == before, "nothing moved or deleted", "bad")
    b = ctx.bitwise(run)
    rec["load"] = {"step": b.get("step"), "error": b.get("error")}
    rec.check(b.get("step") == 8, "lopt.load still gives step 8", "bad")


@case("B19", "All three lopt.json files garbage")
def b19(ctx, rec):
    def damage(run):
        for s in (6, 7, 8):
            _garbage(_step(run, s) / "lopt.json")
    _corrupt(ctx, rec, "B19", damage)
    err = rec["load"]["error"] or ""
    rec.check(err.startswith("CheckpointError") and "\n" not in err,
              "lopt.load raises one CheckpointError line")


@case("B20", "Top-level config.json and every step's config.json deleted")
def b20(ctx, rec):
    def damage(run):
        for f in [run / "config.json", *run.glob("checkpoints/*/config.json")]:
            f.unlink()
    _corrupt(ctx, rec, "B20", damage)


def _edit_first_leaf(run, edit):
    """Applies ``edit`` to the first theta leaf of the newest step's lopt.json."""
    f = _step(run) / "lopt.json"
    doc = json.loads(f.read_text())
    edit(next(v for v in doc["theta"].values() if isinstance(v, dict) and "shape" in v))
    f.write_text(json.dumps(doc))


@case("B21", "lopt.json with one leaf's shape changed")
def b21(ctx, rec):
    def grow(leaf):
        leaf["shape"] = [leaf["shape"][0] + 1, *leaf["shape"][1:]]
    _corrupt(ctx, rec, "B21", lambda run: _edit_first_leaf(run, grow), expect_load_step=7)


@case("B22", "lopt.json with a NaN in theta")
def b22(ctx, rec):
    def nan(leaf):
        leaf["values"][0] = float("nan")
    _corrupt(ctx, rec, "B22", lambda run: _edit_first_leaf(run, nan), expect_load_step=7)


@case("B23", "Finished run: final lopt.json truncated, then --resume")
def b23(ctx, rec):
    _corrupt(ctx, rec, "B23", lambda run: _truncate(_step(run, 20) / "lopt.json"),
             base="ref20", expect_load_step=19)


@case("B24", "Finished run: final step's biggest data file truncated, then --resume")
def b24(ctx, rec):
    run, _ = _corrupt(ctx, rec, "B24", lambda run: _truncate(_biggest(_step(run, 20))),
                      base="ref20")
    rec.check((run / "checkpoints" / "20.unusable").is_dir(), "the damaged step is kept as "
              "20.unusable", "bad")
