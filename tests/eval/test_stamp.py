"""eval.stamp: a group cached before keys held digests is stamped with the digests of the
commit that computed it, so today's cache reuses it exactly when that code equals today's."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from eval import stamp
from eval import suite as S

ROOT = Path(__file__).resolve().parents[2]
SAME, CHANGED, NOWHERE = "mlp-digits8-w16-d2", "mlp-digits8-w16-d3", "mlp-digits8-w16-d4"
STEPS, LRS, SEEDS = 4, [1e-3, 3e-3], [0, 1]


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def _old_group(task: str) -> dict:
    """A group as the suite cached it before keys held digests (its numbers made up)."""
    key = {k: v for k, v in S.baseline_key(task, "adamw", STEPS, LRS, SEEDS).items()
           if k not in stamp.DIGESTS}
    return {"key": {**key, "version": S.SUITE_VERSION},
            "losses": [[[2.0 - 0.1 * i - lr for i in range(STEPS)] for _ in SEEDS] for lr in LRS],
            "test_loss": [[1.5] * len(SEEDS) for _ in LRS],
            "test_accuracy": [[0.5] * len(SEEDS) for _ in LRS],
            "diverged": [[False] * len(SEEDS) for _ in LRS],
            "test_metrics": "whole test split", "wall_s": 1.0, "compile_s": 1.0,
            "runs": len(LRS) * len(SEEDS), "steps": STEPS, "version": S.SUITE_VERSION}


@pytest.fixture(scope="module")
def stamped(tmp_path_factory):
    """A repository of this project's code: commit 1 as today, commit 2 with AdamW's default
    weight decay changed. Its report says the SAME cell ran at commit 1 and the CHANGED cell
    at commit 2; a third group's cell is in no run. Returns (repo, outcomes by task)."""
    repo = tmp_path_factory.mktemp("old")
    for pkg in stamp.CODE_PATHS:
        shutil.copytree(ROOT / pkg, repo / pkg, ignore=shutil.ignore_patterns(
            "__pycache__", "*.npz"))
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "today's code")
    first = _git(repo, "rev-parse", "HEAD")
    old = "def adamw(lr: optax.ScalarOrSchedule, roles: Any = None, weight_decay: float = 0.0)"
    f = next(p for p in sorted((repo / "lopt").rglob("*.py")) if old in p.read_text())
    src = f.read_text()
    f.write_text(src.replace(old, old.replace("0.0)", "0.1)")))
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "decay 0.1")
    second = _git(repo, "rev-parse", "HEAD")
    report = repo / "checkpoints" / "ev"
    (report / "cells").mkdir(parents=True)
    cells = [{"task": S.variant(t, "mup"), "steps": STEPS} for t in (SAME, CHANGED, NOWHERE)]
    (report / "results.json").write_text(json.dumps({
        "commit": second, "cells": cells, "merged_from": [
            {"source": "a", "commit": first[:7], "cells": [f"{SAME} ({STEPS} steps)"]},
            {"source": "b", "commit": second[:7], "cells": [f"{CHANGED} ({STEPS} steps)"]}]}))
    for t in (SAME, CHANGED, NOWHERE):
        g = _old_group(t)
        (report / "cells" / stamp.group_file_name(g["key"])).write_text(json.dumps(g))
    outcomes = stamp.stamp_dir(report / "cells", log=lambda s: None)
    return report, first, second, {o.what.split(" on ")[1].split(" ")[0]: o for o in outcomes}


def _lookup(report: Path, task: str, monkeypatch):
    """Today's Runner asked for the group: its cached result, or "computed"."""
    def compute(*a, **kw):
        raise LookupError("computed")
    monkeypatch.setattr(S.Runner, "_compute", compute)
    try:
        return S.Runner(report).run_baseline(task, "adamw", STEPS, LRS, SEEDS)
    except LookupError:
        return "computed"


def test_a_group_computed_by_todays_code_is_a_cache_hit(stamped, monkeypatch):
    report, first, _, by_task = stamped
    o = by_task[SAME]
    assert (o.status, o.reusable, o.commit) == ("stamped", True, first)
    doc = json.loads((report / "cells" / o.new_file).read_text())
    assert doc["stamped_from"] == first and "stamped_from" not in doc["key"]
    assert not (report / "cells" / o.file).exists()        # the stamped file replaces it
    got = _lookup(report, SAME, monkeypatch)
    assert got != "computed" and got["losses"] == _old_group(SAME)["losses"]


def test_a_group_computed_by_other_code_is_stamped_but_missed(stamped, monkeypatch):
    report, _, second, by_task = stamped
    o = by_task[CHANGED]
    assert (o.status, o.reusable, o.stale_in, o.commit) == ("stamped", False, ("code",), second)
    assert json.loads((report / "cells" / o.new_file).read_text())["stamped_from"] == second
    assert _lookup(report, CHANGED, monkeypatch) == "computed"


def test_a_group_whose_commit_is_unknown_is_left_alone(stamped):
    report, _, _, by_task = stamped
    o = by_task[NOWHERE]
    assert o.status == "skipped" and "names no run" in o.reason
    assert json.loads((report / "cells" / o.file).read_text()) == _old_group(NOWHERE)
    lines = stamp.summary(list(by_task.values()))
    assert lines.startswith("3 files: 2 stamped (1 reusable today, 1 stale), 1 skipped")


def test_no_report_and_no_commit_is_a_reason_not_a_stamp(tmp_path):
    cells = tmp_path / "cells"
    cells.mkdir()
    subprocess.run(["git", "-C", str(tmp_path), "init", "-q"], check=True)
    g = _old_group(SAME)
    name = stamp.group_file_name(g["key"])
    (cells / name).write_text(json.dumps(g))
    # a joined sweep that older code stored with its first part's key: not that group
    joined = {**g, "losses": g["losses"] * 2}
    (cells / "joined.json").write_text(json.dumps(joined))
    o, j = sorted(stamp.stamp_dir(cells, log=lambda s: None), key=lambda o: o.file != name)
    assert o.status == "skipped" and "no results.json" in o.reason
    assert j.status == "skipped" and "not the group of its stored key" in j.reason
    assert json.loads((cells / name).read_text()) == g
    assert json.loads((cells / "joined.json").read_text()) == joined
