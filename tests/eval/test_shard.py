"""Splitting a suite over machines (``python -m eval --shard i/n``) and joining the parts."""

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eval import merge as M, suite as S
from eval.shard import ShardError, parse_shard, select, units

ROOT = Path(__file__).resolve().parents[2]


def test_shard_values_parse_and_bad_ones_name_the_form():
    assert parse_shard("0/2") == (0, 2) and parse_shard(" 3 / 4 ") == (3, 4)
    for bad in ("2/2", "1/0", "-1/2", "a/b", "1", "", "0/2/3"):
        with pytest.raises(ShardError, match="--shard"):
            parse_shard(bad)


def test_a_bad_shard_on_the_command_line_is_one_error_line():
    r = subprocess.run([sys.executable, "-m", "eval", "--lo", "mulo-cpu", "--suite", "smoke",
                        "--shard", "2/2", "--out", "/tmp/never-eval"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("python -m eval: error: --shard 2/2:")
    assert not Path("/tmp/never-eval").exists()


META = {"tasks": ["mlp-fmnist8-w32-d3", "mlp-fmnist8-w64-d3"], "es": {"max_horizon": 200}}


def test_shards_are_disjoint_cover_the_suite_and_keep_a_mutransfer_family_together():
    spec = S.SUITES["quick"]
    cells = S.cells_for(META, spec)
    parts = [S.shard_cells(cells, spec, META, (i, 3)) for i in range(3)]
    assert sorted(map(repr, (c for p in parts for c in p))) == sorted(map(repr, cells))
    assert all(p for p in parts)
    # without μTransfer every cell is its own part; with it, the in-distribution and wider
    # cells of one family (a wider cell may reuse the LR tuned at w64) share a shard
    assert len(units(cells, lambda c: S.family(c.task), lambda c: False)) == len(cells)
    moving = dataclasses.replace(spec, mutransfer_above=2)
    parts = [S.shard_cells(cells, moving, META, (i, 2)) for i in range(2)]
    family = [c for c in cells if S.family(c.task) == "mlp-fmnist8-w*-d3"
              and c.axis in ("in-distribution", "wider")]
    assert any(all(c in p for c in family) for p in parts)
    with pytest.raises(ShardError, match="use N <="):
        select(cells, (7, 8), lambda c: S.family(c.task), lambda c: True)


@pytest.mark.slow
def test_two_shards_of_the_smoke_suite_merge_into_the_unsharded_report(tmp_path):
    from meta_train.config import PRESETS
    from meta_train.loop import run
    cfg = dataclasses.replace(PRESETS["smoke"], outer_steps=1, validate_every=0)
    run(cfg, tmp_path / "lo", progress=False)
    lo = [str(tmp_path / "lo")]
    docs = [S.run_suite(lo, "smoke", tmp_path / f"s{i}", progress=False, shard=(i, 2))
            for i in range(2)]
    assert [d["shard"] for d in docs] == ["0/2", "1/2"]
    groups = [{f.name for f in (tmp_path / f"s{i}" / "cells").glob("*.json")} for i in range(2)]
    assert groups[0] and groups[1] and not groups[0] & groups[1]
    # the unsharded run over the union of the shards' caches computes nothing new: the
    # shards ran every group of the suite, each once
    (tmp_path / "all" / "cells").mkdir(parents=True)
    for i in range(2):
        for f in (tmp_path / f"s{i}" / "cells").glob("*.json"):
            shutil.copy(f, tmp_path / "all" / "cells" / f.name)
    whole = S.run_suite(lo, "smoke", tmp_path / "all", progress=False)
    assert {f.name for f in (tmp_path / "all" / "cells").glob("*.json")} == groups[0] | groups[1]
    merged = M.merge(docs, ["s0", "s1"])

    def rows(doc):
        return {(c["axis"], c["task"], c["steps"], n): {k: v for k, v in o.items() if k != "run"}
                for c in doc["cells"] for n, o in c["optimizers"].items()}
    assert rows(merged) == rows(whole) and len(rows(whole)) >= 4
    assert "shard" not in merged and "shard" not in whole
    assert [(c["axis"], c["task"]) for c in merged["cells"]] == \
        [(c["axis"], c["task"]) for c in whole["cells"]]


def test_a_merge_names_the_shards_of_a_split_it_lacks():
    from eval.merge import missing_shards
    docs = [{"shard": "0/3"}, {"shard": "2/3"}, {}]
    assert missing_shards(docs) == ["1/3"]
    assert missing_shards([{"shard": "0/2"}, {"shard": "1/2"}]) == []
