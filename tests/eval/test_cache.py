"""The eval cache serves a group only if it is the requested one, and its key holds what the
numbers depend on (optimizer code and defaults, task init, data content)."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from eval import keys as K
from eval import suite as S
from eval.cache import CacheWarning, GroupCache

TASK = "mlp-fmnist8-w32-d3-sp"


@pytest.fixture
def computed(monkeypatch):
    """Groups computed (task, lrs, seeds); each run's curve is LR x 100 + seed at every step,
    offset by the number of groups computed before, so a recomputed group reads differently."""
    calls = []

    def compute(self, task_name, make, steps, lrs, seeds, needs_activations, pass_loss=False):
        calls.append((task_name, tuple(lrs), tuple(seeds)))
        return {"losses": [[[lr * 100 + s + len(calls)] * steps for s in seeds] for lr in lrs],
                "test_loss": [[lr] * len(seeds) for lr in lrs],
                "test_accuracy": [[0.5] * len(seeds) for lr in lrs],
                "diverged": [[False] * len(seeds) for lr in lrs],
                "test_metrics": "whole test split", "wall_s": 1.0, "compile_s": 1.0,
                "runs": len(lrs) * len(seeds), "steps": steps, "host": K.host_record()}
    monkeypatch.setattr(S.Runner, "_compute", compute)
    return calls


def _file(runner, *args, **kw):
    return runner._file({**S.baseline_key(*args, **kw), "version": S.SUITE_VERSION})


def test_a_cell_file_copied_over_another_cells_name_is_recomputed_with_a_warning_naming_it(
        tmp_path, computed):
    runner = S.Runner(tmp_path)
    w16 = runner.run_baseline(TASK, "adamw", 4, [1e-3], [1])
    runner.run_baseline(TASK, "adamw", 4, [2e-3], [1])
    f16, f32 = _file(runner, TASK, "adamw", 4, [1e-3], [1]), _file(runner, TASK, "adamw", 4,
                                                                    [2e-3], [1])
    shutil.copy(f32, f16)
    with pytest.warns(CacheWarning, match=f"{f16}.*another group.*lrs"):
        again = runner.run_baseline(TASK, "adamw", 4, [1e-3], [1])
    assert len(computed) == 3 and again["losses"][0][0][0] == w16["losses"][0][0][0] + 2
    assert json.loads(f16.read_text())["key"]["lrs"] == [1e-3]        # rewritten as its own


def test_a_cached_group_whose_curves_are_shorter_than_its_steps_is_recomputed(tmp_path,
                                                                             computed):
    runner = S.Runner(tmp_path)
    runner.run_baseline(TASK, "adamw", 30, [1e-3], [1, 2])
    f = _file(runner, TASK, "adamw", 30, [1e-3], [1, 2])
    cut = json.loads(f.read_text())
    cut["losses"] = [[c[:5] for c in per_lr] for per_lr in cut["losses"]]
    f.write_text(json.dumps(cut))
    with pytest.warns(CacheWarning, match=r"losses of shape \(1, 2, 5\), not the \(1, 2, 30\)"):
        res = runner.run_baseline(TASK, "adamw", 30, [1e-3], [1, 2])
    assert len(computed) == 2 and np.shape(res["losses"]) == (1, 2, 30)


@pytest.mark.parametrize("content", [b"\xff\xfe garbage", b"{}", b"null", b"[1, 2]", b""])
def test_a_damaged_cached_file_is_recomputed_with_a_warning_naming_it(tmp_path, computed,
                                                                     content):
    runner = S.Runner(tmp_path)
    first = runner.run_baseline(TASK, "adamw", 4, [1e-3], [1])
    f = _file(runner, TASK, "adamw", 4, [1e-3], [1])
    f.write_bytes(content)
    with pytest.warns(CacheWarning, match=str(f)):
        res = runner.run_baseline(TASK, "adamw", 4, [1e-3], [1])
    assert len(computed) == 2 and np.shape(res["losses"]) == np.shape(first["losses"])
    assert json.loads(f.read_text())["losses"] == res["losses"]


def test_changing_a_baseline_default_is_a_cache_miss(tmp_path, computed, monkeypatch):
    import lopt.baselines as B
    runner = S.Runner(tmp_path)
    runner.run_baseline(TASK, "modular", 4, [1e-2], [1])
    runner.run_baseline(TASK, "modular", 4, [1e-2], [1])
    assert len(computed) == 1
    # modular's momentum 0.9 -> 0.95: the same name, other numbers
    monkeypatch.setattr(B.modular, "__defaults__", (0.95,) + B.modular.__defaults__[1:])
    K.baseline_digest.cache_clear()
    try:
        runner.run_baseline(TASK, "modular", 4, [1e-2], [1])
        assert len(computed) == 2
        assert K.baseline_digest("adamw") != K.baseline_digest("adamw-cosine")  # its schedule
    finally:
        monkeypatch.undo()
        K.baseline_digest.cache_clear()
    runner.run_baseline(TASK, "modular", 4, [1e-2], [1])        # the old default: cached
    assert len(computed) == 2


def test_code_digests_follow_the_code_a_factory_calls_but_not_its_comments(tmp_path):
    import importlib.util
    src = ("import math\nC = 2\n"
           "def helper(x):\n    return x * C\n"
           "def factory(lr, momentum=0.9):\n    \"\"\"doc\"\"\"\n"
           "    import os\n    return helper(lr) + momentum\n")
    moved = src.replace("import math\n", "import math as m\nimport json\n").replace(
        "    import os\n", "    import os.path\n")
    digests = []
    for i, text in enumerate((src, src.replace('"""doc"""', '"""other doc"""  # a comment'),
                              moved,
                              src.replace("C = 2", "C = 3"),
                              src.replace("x * C", "x * C + 1"),
                              src.replace("momentum=0.9", "momentum=0.95"))):
        f = tmp_path / f"probe{i}.py"
        f.write_text(text)
        spec = importlib.util.spec_from_file_location(f"lopt._probe{i}", f)   # a lopt module
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        digests.append(K.code_digest(mod.factory))
    assert digests[0] == digests[1]                 # docstring and comment: the same code
    assert digests[0] == digests[2]                 # imports from elsewhere: the same code
    assert len(set(digests)) == 4                   # constant, helper and default count


def test_code_digests_are_the_same_in_every_process():
    # a digest that differed between processes (e.g. a repr holding a memory address) would
    # make every group a miss in the next run
    import subprocess
    import sys
    script = ("from eval import keys as K, suite as S; "
              "print(K.baseline_digest('adamw'), K.baseline_digest('schatten'), "
              "K.lo_code_digest(S.make_lo))")
    runs = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True, cwd=Path(__file__).resolve().parents[2]).stdout
            for _ in range(2)}
    assert len(runs) == 1
    assert runs.pop().split() == [K.baseline_digest("adamw"), K.baseline_digest("schatten"),
                                  K.lo_code_digest(S.make_lo)]


def test_a_task_whose_init_or_data_changes_under_the_same_name_is_a_cache_miss(
        tmp_path, computed, monkeypatch):
    from meta_train import tasks as T
    runner = S.Runner(tmp_path)
    runner.run_baseline(TASK, "adamw", 4, [1e-3], [1])
    original = T.get_task

    def lecun_init(name):       # the same name, another init (N(0, 1/fan_in) kernels)
        task = original(name)
        return dataclasses.replace(task, init=original(name + "-lecun").init)
    monkeypatch.setattr(T, "get_task", lecun_init)
    monkeypatch.setattr(S, "get_task", lecun_init)
    K.init_digest.cache_clear()
    runner.run_baseline(TASK, "adamw", 4, [1e-3], [1])
    assert len(computed) == 2

    def other_data(name):       # the same name, one pixel of the training images changed
        return dataclasses.replace(original(name), data=_nudged(original(name).data))
    monkeypatch.setattr(T, "get_task", other_data)
    monkeypatch.setattr(S, "get_task", other_data)
    K.init_digest.cache_clear()
    runner.run_baseline(TASK, "adamw", 4, [1e-3], [1])
    assert len(computed) == 3
    monkeypatch.undo()
    K.init_digest.cache_clear()
    runner.run_baseline(TASK, "adamw", 4, [1e-3], [1])      # as it was: cached
    assert len(computed) == 3


def _nudged(data):
    import jax
    leaves, tree = jax.tree.flatten(data)
    leaves[0] = np.asarray(leaves[0]).copy()
    leaves[0].flat[0] += 1
    return jax.tree.unflatten(tree, leaves)


def test_a_group_cached_under_the_key_without_digests_is_a_miss(tmp_path, computed):
    # groups cached before keys held the code, init and data digests: recomputed, not reused
    runner = S.Runner(tmp_path)
    new = S.baseline_key(TASK, "adamw", 4, [1e-3], [1])
    legacy = {k: v for k, v in new.items() if k not in ("code", "init", "data")}
    legacy["version"] = S.SUITE_VERSION
    runner._file(legacy).write_text(json.dumps({"key": legacy, "losses": [[[7.0] * 4]]}))
    res = runner.run_baseline(TASK, "adamw", 4, [1e-3], [1])
    assert len(computed) == 1 and res["losses"] != [[[7.0] * 4]]


def test_each_group_records_its_jax_version_and_threads_and_the_report_flags_a_mixture(
        tmp_path, computed):
    from eval.report import _host_line
    runner = S.Runner(tmp_path)
    g = runner.run_baseline(TASK, "adamw", 4, [1e-3], [1])
    host = K.host_record()
    assert g["host"] == host and host["cpu_threads"] >= 1 and host["jax"]
    row = S._summary(g, 0)
    assert row["host"] == host
    doc = {"cells": [{"optimizers": {"a": row, "b": dict(row)}}]}
    assert "mixture" not in _host_line(doc)[0] and "(every row)" in _host_line(doc)[0]
    doc["cells"][0]["optimizers"]["b"] = dict(row, host=dict(host, cpu_threads=16))
    line = _host_line(doc)[0]
    assert "a mixture" in line and "16 CPU threads (1 rows)" in line


def test_a_joined_sweep_is_stored_under_its_own_key_and_says_when_its_parts_differ(
        tmp_path, computed):
    lrs = [1e-3, 2e-3, 3e-3]
    runner = S.Runner(tmp_path, group_runs=1)
    # the first LR's group was cached by suite version 1 (8 sampled test batches)
    old = {**S.baseline_key(TASK, "adamw", 4, lrs[:1], [0])}
    runner._file(old).write_text(json.dumps({
        "key": old, "losses": [[[5.0] * 4]], "test_loss": [[1.0]], "test_accuracy": [[0.5]],
        "diverged": [[False]], "wall_s": 1.0, "compile_s": 0.0, "runs": 1, "steps": 4}))
    whole = runner.run_baseline(TASK, "adamw", 4, lrs, [0])
    assert len(computed) == 2 and whole["losses"][0] == [[5.0] * 4]
    assert whole["version"] == 1
    assert whole["test_metrics"] == "8 sampled test batches + whole test split"
    stored = json.loads(_file(runner, TASK, "adamw", 4, lrs, [0]).read_text())
    assert stored["key"] == {**S.baseline_key(TASK, "adamw", 4, lrs, [0]),
                             "version": S.SUITE_VERSION}
    assert stored["test_metrics"] == whole["test_metrics"]
    # read back whole (no split), with no warning
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = S.Runner(tmp_path).run_baseline(TASK, "adamw", 4, lrs, [0])
    assert again["losses"] == whole["losses"] and len(computed) == 2


def test_the_cache_refuses_group_runs_below_one(tmp_path):
    with pytest.raises(ValueError, match="at least 1"):
        GroupCache(tmp_path, group_runs=0)
