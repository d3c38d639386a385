import os

# Tests run on the CPU; keep XLA from grabbing every core for one tiny op.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent XLA compilation cache per test session, shared by the xdist workers and the
# subprocesses tests start (they inherit the environment): the suite and meta-training tests
# compile the same programs in several processes, and a cache hit replaces a ~45 s compile of
# the smoke meta-training step with a ~1 s load. The directory is fresh each session (the
# controller creates it before the workers start), so no test depends on an earlier run.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ and "PYTEST_XDIST_WORKER" not in os.environ:
    import tempfile
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mulo-xla-cache-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest

# Module fixtures that meta-train or run a whole suite make every test that uses them slow.
_SLOW_FIXTURES = {"smoke_eval", "smoke_run", "short_run"}


# The files that take minutes, longest first (measured by `make test --durations`). xdist's
# `--dist loadfile` hands out whole files in collection order, so a long file collected last
# runs alone on one worker while the other idles; started first, the short files fill in.
_LONGEST_FIRST = (
    "lopt/test_shipped.py", "eval/test_suite.py", "meta_train/test_distributed.py",
    "lopt/test_shipped_wide.py", "eval/test_bench.py", "eval/test_scaling.py",
    "clients/test_clients.py", "meta_train/test_loop.py", "meta_train/test_faults.py",
    "meta_train/test_velo_meta.py", "meta_train/test_tasks.py", "meta_train/test_reliability.py")


def _file_rank(item) -> int:
    path = item.nodeid.split("::", 1)[0].removeprefix("tests/")
    return _LONGEST_FIRST.index(path) if path in _LONGEST_FIRST else len(_LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    items.sort(key=_file_rank)   # stable: each file keeps its own order


def pytest_unconfigure(config):
    # the controller made the session's compilation cache; it removes it when the run ends
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", "")
    if "PYTEST_XDIST_WORKER" not in os.environ and os.path.basename(cache).startswith(
            "mulo-xla-cache-"):
        import shutil
        shutil.rmtree(cache, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    # `make test` passes without the Debian data packages; say how many tests that skipped
    from needs_data import REASON_PREFIX
    by_package = {}
    for rep in terminalreporter.stats.get("skipped", ()):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        if REASON_PREFIX in reason:
            package = reason.split(REASON_PREFIX, 1)[1].split("(")[0].strip()
            by_package[package] = by_package.get(package, 0) + 1
    if by_package:
        terminalreporter.write_line(
            f"{sum(by_package.values())} skipped for missing data: " + "; ".join(
                f"{n} need {p}" for p, n in sorted(by_package.items())))
