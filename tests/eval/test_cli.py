"""``python -m eval`` turns bad input into one error line, and never writes into a
meta-training run's directory."""

import errno
import json
from pathlib import Path

import pytest

from eval import suite as S
from eval.cli import main
from eval.report import OutError, write_all


@pytest.fixture
def requested(monkeypatch):
    """The overrides ``main`` passes to the suite (which then stops with a SuiteError)."""
    seen = {}

    def run_suite(lo, suite, out, **kw):
        seen.update(kw["overrides"], out=out)
        raise S.SuiteError("stopped here")
    monkeypatch.setattr(S, "run_suite", run_suite)
    return seen


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("value", ["0", "-2", "abc", "0.5", "2,0", ","])
def test_a_wider_that_is_not_a_whole_multiplier_is_one_line_naming_wider(
        tmp_path, capsys, requested, value):
    with pytest.raises(SystemExit) as e:
        main(["--lo", "mulo-cpu", "--suite", "smoke", "--out", str(tmp_path),
              f"--wider={value}"])
    assert e.value.code == 2 and not requested
    line = _error_line(capsys)
    assert "argument --wider" in line and "whole multipliers of at least 1" in line, line


def test_wider_and_seeds_are_passed_to_the_suite(tmp_path, requested):
    assert main(["--lo", "mulo-cpu", "--suite", "smoke", "--out", str(tmp_path),
                 "--wider", "2,4", "--seeds", "1"]) == 2
    assert requested["wider"] == (2, 4) and requested["seeds"] == 1


@pytest.mark.parametrize("option", ["--seeds", "--group-runs"])
@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_seeds_or_group_runs_below_one_are_refused_not_ignored(tmp_path, capsys, requested,
                                                              option, value):
    with pytest.raises(SystemExit):
        main(["--lo", "mulo-cpu", "--suite", "smoke", "--out", str(tmp_path),
              f"{option}={value}"])
    line = _error_line(capsys)
    assert line.endswith(f"error: argument {option}: takes a whole number of at least 1, "
                         f"got {value!r}") and not requested


def _meta_training_run(d: Path) -> Path:
    (d / "checkpoints" / "3").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"seed": 0}))
    (d / "tb").mkdir()
    event = d / "tb" / "events.out.tfevents.1.host"
    event.write_bytes(b"meta-training curves")
    return event


def test_eval_into_a_meta_training_run_is_refused_and_its_tb_is_untouched(tmp_path, capsys,
                                                                         requested):
    run = tmp_path / "run"
    event = _meta_training_run(run)
    assert main(["--lo", str(run), "--suite", "smoke", "--out", str(run)]) == 2
    line = _error_line(capsys)
    assert line == (f"error: --out {run} holds a meta-training run (config.json, checkpoints/),"
                    f" whose tb/ a report would replace; write the eval beside it, e.g. "
                    f"--out {run}/eval")
    assert not requested and event.read_bytes() == b"meta-training curves"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.json", "tb"]
    # the report writer refuses it too (eval.merge, library callers)
    with pytest.raises(OutError, match="holds a meta-training run"):
        write_all({"cells": []}, run, "test")
    assert event.read_bytes() == b"meta-training curves"


def test_an_out_that_is_a_file_or_not_writable_is_one_error_line(tmp_path, capsys, requested,
                                                                monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["--lo", "mulo-cpu", "--suite", "smoke", "--out", str(afile)]) == 2
    assert _error_line(capsys) == (f"error: --out {afile} is a file, not a directory; give a "
                                   "directory path")

    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(self))
    monkeypatch.setattr(Path, "mkdir", read_only)
    out = tmp_path / "ro" / "ev"
    assert main(["--lo", "mulo-cpu", "--suite", "smoke", "--out", str(out)]) == 2
    assert _error_line(capsys) == (f"error: --out {out} cannot be written (Read-only file "
                                   "system); give a writable directory")
    assert not requested


def test_a_cache_warning_is_one_line_naming_the_file(tmp_path, requested, monkeypatch):
    import warnings

    from eval.cache import CacheWarning
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after
    assert main(["--lo", "mulo-cpu", "--suite", "smoke", "--out", str(tmp_path)]) == 2
    msg = "cached group x/cells/a.json holds no group (no loss curves); recomputing it"
    assert warnings.formatwarning(msg, CacheWarning, "eval/cache.py", 1) == f"warning: {msg}\n"
    other = warnings.formatwarning("other", UserWarning, "lopt/mup/roles.py", 7)
    assert other.startswith("lopt/mup/roles.py:7: UserWarning: other")
