"""Progress output in logs, and what ``invocations.jsonl`` records."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tqdm import tqdm

from meta_train.progress import LineProgress, progress_bar

ROOT = Path(__file__).resolve().parents[2]


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_line_progress_prints_about_twenty_lines_and_no_carriage_returns():
    buf = io.StringIO()
    bar = progress_bar(1000, desc="meta-train", unit="step", file=buf)
    assert isinstance(bar, LineProgress)
    for i in range(1000):
        bar.set_postfix(meta_loss=f"{1 - i / 1000:.4f}")
        bar.update(1)
    bar.close()
    text = buf.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    # the first step (compilation), then every 50 steps: 1, 50, 100, ..., 1000
    assert len(lines) == 21, lines
    assert lines[0].startswith("meta-train 1/1000 step (0%)")
    assert lines[-1].startswith("meta-train 1000/1000 step (100%)")
    assert lines[-1].endswith("meta_loss 0.0010")


def test_line_progress_resumed_run_counts_from_its_start_and_close_flushes():
    buf = io.StringIO()
    bar = LineProgress(100, initial=90, desc="eval", unit="group", every=4, file=buf)
    for _ in range(6):
        bar.update(1)
    bar.close()             # 96 was not a multiple of the interval: close prints it
    assert [ln.split(" ")[1] for ln in buf.getvalue().splitlines()] == ["91/100", "95/100",
                                                                        "96/100"]


def test_terminal_gets_a_tqdm_bar_and_disabled_prints_nothing():
    assert isinstance(progress_bar(10, file=_Tty()), tqdm)
    buf = io.StringIO()
    bar = progress_bar(10, file=buf, enabled=False)
    bar.update(10)
    bar.close()
    assert buf.getvalue() == ""


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "meta_train", "--preset", "smoke", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_log_lines_and_refused_commands_are_not_recorded(tmp_path):
    out = tmp_path / "run"
    r = _cli("--out", str(out), "--outer-steps", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    # stderr is a pipe here: whole lines, no redrawn bar
    assert "\r" not in r.stderr
    assert [ln.split(",")[0] for ln in r.stderr.splitlines() if ln.startswith("meta-train")] \
        == ["meta-train 1/2 step (50%)", "meta-train 2/2 step (100%)"]
    inv = (out / "invocations.jsonl").read_text().splitlines()
    assert len(inv) == 1 and "--outer-steps 2" in json.loads(inv[0])["command"]

    refused = _cli("--out", str(out), "--outer-steps", "2")     # no --resume
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith(f"error: {out} already holds a run")
    # (outer_steps may change on resume: a run can be extended; its seed may not)
    mismatch = _cli("--out", str(out), "--seed", "1", "--resume")
    assert mismatch.returncode == 2 and "has another config: it differs" in mismatch.stderr
    assert (out / "invocations.jsonl").read_text().splitlines() == inv
