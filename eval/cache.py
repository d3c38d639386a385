"""The suite's cache of training-run groups: versioned keys, split sweeps, and lock files
that let several processes share one output directory.

A group is a vmapped set of runs (LRs x seeds) of one optimizer on one task; its key names
everything its numbers depend on and is hashed into ``<out>/cells/<hash>.json``. A process
computing a group holds an exclusive ``flock`` on ``<hash>.lock`` (the file names its pid and
host), so processes on one machine sharing ``<out>`` (one per core) never compute a group
twice. The kernel drops a lock when its process dies, so a killed run blocks no one (flock
between machines on a network file system is not relied on).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from pathlib import Path

import numpy as np

from lopt.io.locks import holder, is_held, mark_holder, try_lock  # noqa: F401 (re-exported)

# The version of what a cached group means. Part of every cache key and recorded in every
# row of results.json: bump it when a change alters the numbers a group holds and the key's
# digests (eval.keys: optimizer code, task init, data) do not see it, e.g. the inner training
# loop, random streams or metrics; not float rounding, which moves with any change to the
# compiled program (e.g. a ``lax.cond`` kept as a branch instead of a select).
#   1: test metrics from 8 test batches drawn with replacement (cached without a version)
#   2: test metrics on the whole test split (``Task.split_metrics``)
SUITE_VERSION = 2
# Older versions whose training runs this version repeats unchanged (same algorithm and
# random streams; only the test metrics differ, as named): their groups are reused instead
# of retrained.
COMPATIBLE_VERSIONS = {1: "8 sampled test batches"}


class CacheWarning(UserWarning):
    """A cached group file that cannot be used (damaged, or another group's): recomputed."""


def _miss(f: Path, problem: str) -> None:
    warnings.warn(f"cached group {f} {problem}; recomputing it", CacheWarning, stacklevel=3)
    return None


def group_problem(res, key: dict) -> str | None:
    """Why ``res`` (a cache file's content) is not the group of ``key``, or None when it is:
    it must be a dict whose stored key equals ``key`` and whose per-run fields have ``key``'s
    LRs x seeds (x steps for the loss curves)."""
    if not isinstance(res, dict) or "losses" not in res:
        return "holds no group (no loss curves)"
    stored = res.get("key")
    if stored != key:
        if not isinstance(stored, dict):
            return "holds another group (no key stored)"
        diff = sorted(k for k in set(stored) | set(key) if stored.get(k) != key.get(k))
        return f"holds another group (its key differs in {', '.join(diff)})"
    want = (len(key["lrs"]), len(key["seeds"]))
    for field, shape in (("losses", want + (key["steps"],)), ("test_loss", want),
                         ("test_accuracy", want), ("diverged", want)):
        if field not in res:
            continue
        try:
            got = np.shape(res[field])
        except ValueError:      # ragged lists
            got = "ragged"
        if got != shape:
            return (f"has {field} of shape {got}, not the {shape} of its key "
                    "(LRs x seeds" + (" x steps)" if field == "losses" else ")"))
    if res.get("steps", key["steps"]) != key["steps"]:
        return f"says {res['steps']} steps, not its key's {key['steps']}"
    return None


def group_file_name(key: dict) -> str:
    """The file name of ``key``'s group in a cells directory (16 hex digits of the sha1 of
    the key as sorted JSON)."""
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16] + ".json"


class NotCached(LookupError):
    """A group a ``cached_only`` runner would have to compute."""


class Busy(NotCached):
    """A group another process is computing right now (it holds the group's lock)."""

    def __init__(self, msg: str, lock: Path):
        super().__init__(msg)
        self.lock = lock


def _tmp(f: Path) -> Path:
    """A temporary name next to ``f`` that no other process or thread writes."""
    return f.with_name(f"{f.name}.{os.getpid()}.{threading.get_ident()}.tmp")


class GroupCache:
    """Groups of training runs cached as JSON files in ``<out>/cells``, one per key (a dict
    naming everything the group's numbers depend on). ``cached_only``: never train; a group
    missing from the cache raises :class:`NotCached` (for a report of what a run in progress
    has finished).
    ``group_runs``: at most this many runs (LRs x seeds) per vmapped group; a larger LR sweep
    is split into groups of whole LRs, each cached on its own, so a killed sweep keeps its
    finished groups and a group needs less memory (None: the whole sweep is one group). A
    sweep already cached whole is reused.

    Several processes on one machine can share one ``out`` (e.g. one per core, each pinned
    with ``taskset``): a process computing a group holds the lock on ``<group>.lock`` next
    to its cache file, and another process that needs that group gets :class:`Busy` and
    moves on to other work. A killed process's lock goes with it.

    Raises:
      ValueError: ``group_runs`` below 1.
    """

    def __init__(self, out: Path, cached_only: bool = False, group_runs: int | None = None):
        if group_runs is not None and group_runs < 1:
            raise ValueError(f"group_runs must be at least 1, got {group_runs}")
        self.out = Path(out)
        self.cached_only = cached_only
        self.group_runs = group_runs
        (self.out / "cells").mkdir(parents=True, exist_ok=True)

    def _file(self, key: dict) -> Path:
        return self.out / "cells" / group_file_name(key)

    @staticmethod
    def _read(f: Path, key: dict):
        """The group cached in ``f`` if it is ``key``'s: a missing file is a miss; a file that
        is damaged (not UTF-8, not JSON, not a group) or holds another group (its stored key
        differs from ``key``, or its curves do not have ``key``'s LRs, seeds and steps) is a
        miss with a :class:`CacheWarning` naming it, and is recomputed."""
        try:
            res = json.loads(f.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            return _miss(f, f"unreadable ({type(e).__name__})")
        problem = group_problem(res, key)
        return _miss(f, problem) if problem else res

    def _find(self, key: dict):
        """The cached group of ``key``: this suite version's, or one cached by an older
        version whose training runs this version repeats (same algorithm and random streams),
        its rows naming their test metrics."""
        key = {**key, "version": SUITE_VERSION}
        res = self._read(self._file(key), key)
        if res is not None:
            return res
        unversioned = {k: v for k, v in key.items() if k != "version"}
        for version, test_metrics in COMPATIBLE_VERSIONS.items():
            old = dict(unversioned)
            if version > 1:
                old["version"] = version
            res = self._read(self._file(old), old)
            if res is not None:
                return {**res, "version": version, "test_metrics": test_metrics}
        return None

    def _split(self, key: dict, compute):
        """``compute(lrs, seeds)`` for ``key``'s runs, in groups of at most ``group_runs`` runs
        unless the whole sweep is cached: groups of whole LRs, or, when one LR's seeds are
        more than ``group_runs``, groups of seeds of one LR. The groups' results joined along
        the seed and LR axes, their seconds and runs summed.

        Raises:
          Busy: another process holds one of the groups (the others are computed first).
          NotCached: ``cached_only`` and a group is missing.
        """
        lrs, seeds = list(key["lrs"]), list(key["seeds"])
        budget = self.group_runs or len(lrs) * len(seeds)
        if len(lrs) * len(seeds) <= budget or self._find(key) is not None:
            return self._cached(key, lambda: compute(lrs, seeds))[0]
        per_lr = max(1, budget // len(seeds))
        lr_chunks = [lrs[i:i + per_lr] for i in range(0, len(lrs), per_lr)]
        seed_chunks = ([seeds] if budget >= len(seeds) else
                       [seeds[i:i + budget] for i in range(0, len(seeds), budget)])
        rows, busy = [], None
        for lc in lr_chunks:            # a group another process holds: do the others
            parts = []
            for sc in seed_chunks:
                try:
                    parts.append(self._cached({**key, "lrs": lc, "seeds": sc},
                                              lambda lc=lc, sc=sc: compute(lc, sc))[0])
                except Busy as e:
                    busy = e
            rows.append(parts)
        if busy is not None:
            raise busy
        per_row = [_join(parts, axis=1) for parts in rows]      # seeds of each LR chunk
        whole = {**_join(per_row, axis=0), "groups": sum(len(p) for p in rows)}
        if not self.cached_only:    # the joined sweep, found whatever group_runs a later run uses
            self._write(key, whole)
        return whole

    def _write(self, key: dict, res: dict):
        key = {**key, "version": SUITE_VERSION}
        f = self._file(key)
        tmp = _tmp(f)
        tmp.write_text(json.dumps({**res, "key": key}))     # the key it was asked for
        tmp.replace(f)

    def _cached(self, key: dict, fn):
        res = self._find(key)
        if res is not None:
            return res, True
        what = f"{key['opt']} on {key['task']} ({key['steps']} steps)"
        if self.cached_only:
            raise NotCached(what)
        lock, fd = self._claim(key, what)
        try:
            res = self._find(key)       # finished by another process since the check above
            if res is not None:
                return res, True
            res = {**fn(), "version": SUITE_VERSION}
            self._write(key, res)
        finally:
            lock.unlink(missing_ok=True)    # while still held, so no one locks a dead file
            os.close(fd)
        return res, False

    def _claim(self, key: dict, what: str) -> tuple[Path, int]:
        """``key``'s lock file and the descriptor holding its lock, taken for this process.

        Raises:
          Busy: another live process (or another thread here) holds it.
        """
        lock = self._file({**key, "version": SUITE_VERSION}).with_suffix(".lock")
        fd = try_lock(lock)
        if fd is None:
            raise Busy(f"{what}: being computed by {holder(lock)} (lock {lock})", lock)
        mark_holder(fd)
        return lock, fd


_RUN_FIELDS = ("losses", "test_loss", "test_accuracy", "diverged")    # [lrs, seeds, ...]
# what a group says about how it was computed, besides its key (``stamped_from``: the commit
# whose code computed a group cached before keys held digests, see eval.stamp)
_LABEL_FIELDS = ("version", "test_metrics", "host", "stamped_from")


def _join(parts: list[dict], axis: int) -> dict:
    """Groups joined along the LR (0) or seed (1) axis of their per-run fields; seconds and
    runs summed. Labels (:data:`_LABEL_FIELDS`) the groups share are kept; where they differ
    the joined group says so: the oldest ``version``, the ``test_metrics`` joined with " + ",
    and the distinct ``host`` records as a list. The stored key is not carried over (the
    joined group is written under its own)."""
    if len(parts) == 1:
        return parts[0]
    if axis == 0:
        runs = {k: [x for p in parts for x in p[k]] for k in _RUN_FIELDS}
    else:
        runs = {k: [[x for p in parts for x in p[k][i]] for i in range(len(parts[0][k]))]
                for k in _RUN_FIELDS}
    labels = {}
    for k in _LABEL_FIELDS:
        values = [p.get(k) for p in parts]
        if all(v == values[0] for v in values):
            continue
        if k == "version":
            labels[k] = min(v or 1 for v in values)
        elif k == "test_metrics":
            labels[k] = " + ".join(dict.fromkeys(str(v) for v in values))
        elif k == "stamped_from":     # each part's (None: computed with its digests)
            labels[k] = values
        else:
            labels[k] = distinct_hosts(values)
    first = {k: v for k, v in parts[0].items() if k != "key"}
    return {**first, **runs, **labels, "wall_s": sum(p["wall_s"] for p in parts),
            "compile_s": sum(p["compile_s"] for p in parts),
            "runs": sum(p["runs"] for p in parts)}


def distinct_hosts(records) -> list[dict]:
    """The distinct host records (``eval.keys.host_record``) among ``records``, each a record,
    a list of records (a joined group of several) or None (a group cached before groups
    recorded their host), in first-seen order."""
    out = []
    for r in records:
        for one in (r if isinstance(r, list) else [r]):
            if one is not None and one not in out:
                out.append(one)
    return out
