"""Orbax checkpoints of a meta-training run, with fallback past corrupt ones.

Each step directory holds the orbax item ``state`` (theta, meta-optimizer state, estimator
states, PRNG key, step; stored as its own nested tree, keyed by the names of its fields)
and two plain JSON files written right after orbax commits the step: ``lopt.json`` (theta +
LOConfig, what ``lopt.load`` reads) and ``config.json`` (the run config). Orbax writes to a
temporary directory and renames it on commit, so a half-written checkpoint is never listed;
a committed one that fails to restore (corrupt files) is skipped with a warning and the
previous one is used; the skipped one is moved aside to ``<step>.unusable`` (orbax would
otherwise never save a step at or below it), so training rewrites its step when it gets
there again.

Every checkpoint is verified: orbax commits, with the state, the item ``digest`` (a sha256
over the state's arrays: their paths, dtypes, shapes and bytes, in tree order,
:func:`state_digest`), and a restore compares the arrays read back with it; a mismatch
counts as a damaged checkpoint (fallback, set aside, rewritten). ``lopt.json`` carries its
own digest (:mod:`lopt.io.checkpoint`). Saving a step that exists repairs its JSON files where
they are missing or damaged (a run resumed at its final step rewrites a lost ``lopt.json``).

Checkpoints written before this layout (state leaves keyed by flat index, ``lopt`` and
``config`` as orbax JSON items) or before digests still restore and load, unverified.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from lopt.io.checkpoint import LOPT_FILE, OLD_STEP_FILE, CheckpointError, from_json, write_json


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        self.dir = Path(directory).absolute()
        self._mngr = None
        self._keep = keep
        self._failed = False

    @property
    def mngr(self) -> ocp.CheckpointManager:
        if self._mngr is None:
            if jax.process_count() > 1:   # orbax creates it only with all processes
                self.dir.mkdir(parents=True, exist_ok=True)
            self._mngr = ocp.CheckpointManager(self.dir, options=_options(self._keep))
        return self._mngr

    def has_checkpoints(self) -> bool:
        return self.dir.is_dir() and any(p.name.isdigit() for p in self.dir.iterdir())

    def saved_config(self) -> dict | None:
        """The run config stored with the newest checkpoint whose config reads as JSON
        (None when there is none); reads files only, without orbax."""
        if not self.dir.is_dir():
            return None
        steps = sorted((p for p in self.dir.iterdir() if p.name.isdigit()),
                       key=lambda p: int(p.name), reverse=True)
        for step in steps:
            for file in (step / CONFIG_FILE, step / "config" / "metadata"):   # new, old layout
                try:
                    doc = json.loads(file.read_text())
                except (OSError, ValueError):   # ValueError: bad JSON or bad UTF-8
                    continue
                if isinstance(doc, dict):
                    return doc
        for step in steps:      # every config file lost: the one lopt.json records
            for file in (step / LOPT_FILE, step / OLD_STEP_FILE):
                try:
                    doc = json.loads(file.read_text())["meta"]["config"]
                except (OSError, ValueError, KeyError, TypeError):
                    continue
                if isinstance(doc, dict):
                    return doc
        return None

    def save(self, step: int, state: dict, lopt_doc: dict, config: dict,
             force: bool = False) -> None:
        """Saves ``step`` and waits until it is on disk. A step already saved is kept, its
        ``lopt.json`` and ``config.json`` rewritten where they are missing or damaged.

        Raises:
          OSError: the checkpoint cannot be written (a full disk); nothing half-written is
            left (orbax's temporary directory is removed, and a step committed without its
            JSON files is repaired when the run saves or resumes it again).
        """
        if step in self.mngr.all_steps():
            self.repair(step, lopt_doc, config)
            return
        digest = state_digest(state)
        items = {"state": ocp.args.StandardSave(_payload(state))}
        if digest is not None:
            items["digest"] = ocp.args.JsonSave({"sha256": digest})
        try:
            with _held_back_output() as held:
                self.mngr.save(step, args=ocp.args.Composite(**items), force=force)
                self.mngr.wait_until_finished()
                held.release()      # saved: what orbax said is worth seeing
        except BaseException as e:
            self._failed = True
            for tmp in self.dir.glob(f"{step}.orbax-checkpoint-tmp*"):
                shutil.rmtree(tmp, ignore_errors=True)
            raise _os_error(e, self.dir / str(step)) from e
        for name, doc in ((LOPT_FILE, lopt_doc), (CONFIG_FILE, config)):
            write_json(self.dir / str(step) / name, doc)

    def repair(self, step: int, lopt_doc: dict, config: dict) -> list[str]:
        """Rewrites step ``step``'s ``lopt.json`` and ``config.json`` where they are missing or
        damaged (a kill between orbax's commit and their write, a full disk, a damaged file),
        from the state restored there; returns the names of the files rewritten."""
        d = self.dir / str(step)
        fixed = []
        try:
            if not (d / LOPT_FILE).exists() and (d / OLD_STEP_FILE).is_file():
                from_json(json.loads((d / OLD_STEP_FILE).read_text()))  # an older run's layout
            else:
                from_json(json.loads((d / LOPT_FILE).read_text()))
        except (OSError, ValueError):   # CheckpointError is a ValueError
            write_json(d / LOPT_FILE, lopt_doc)
            fixed.append(LOPT_FILE)
        try:
            ok = isinstance(json.loads((d / CONFIG_FILE).read_text()), dict)
        except (OSError, ValueError):
            ok = (d / "config" / "metadata").is_file()      # an older run's layout
        if not ok:
            write_json(d / CONFIG_FILE, config)
            fixed.append(CONFIG_FILE)
        if fixed:
            warnings.warn(f"{d}: rewrote its missing or damaged {' and '.join(fixed)} "
                          "from the checkpoint's state")
        return fixed

    def restore(self, like: dict) -> dict:
        """Restores the newest restorable checkpoint into the structure of ``like``.

        Raises:
          CheckpointError: no checkpoint restores (the message names each one and why).
        """
        errors, out = [], None
        with _quiet_restore_noise():
            for step in sorted(self.mngr.all_steps(), reverse=True):
                try:
                    out = self._restore_step(step, like)
                    break
                except Exception as e:  # noqa: PERF203 - orbax raises many types
                    msg = _root_cause(e)
                    errors.append(f"{self.dir / str(step)}: {msg[:200]}")
        if out is None:
            raise CheckpointError(f"no restorable checkpoint in {self.dir}: "
                                  + "; ".join(errors))
        if errors:
            moved = self._set_aside(step)
            warnings.warn(f"checkpoint(s) unusable, resumed from step {step} instead: "
                          + "; ".join(errors) + f" (moved to {', '.join(moved)})")
        return out

    def _restore_step(self, step: int, like: dict) -> dict:
        want = self._recorded_digest(step)
        out = self._restore_arrays(step, like)
        if want is not None and state_digest(out) != want:
            raise ValueError("damaged: the arrays read back differ from the ones written "
                             "(sha256 mismatch)")
        return out

    def _recorded_digest(self, step: int) -> str | None:
        """The digest committed with ``step``; None for checkpoints written before digests.

        Raises:
          ValueError: the digest item is there but unreadable (a damaged checkpoint).
        """
        f = self.dir / str(step) / "digest" / "metadata"
        if not (self.dir / str(step) / "digest").exists():
            return None
        try:
            digest = json.loads(f.read_text())["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"damaged: its digest is unreadable ({type(e).__name__})") from None
        if not isinstance(digest, str):
            raise ValueError("damaged: its digest is not a string")
        return digest

    def _restore_arrays(self, step: int, like: dict) -> dict:
        # The state tree by field names (this layout), else by flat leaf index (older runs).
        first = None
        for to_payload, from_payload in ((_payload, _unpayload), (_payload_v1, _unpayload_v1)):
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, to_payload(like))
            try:
                out = self.mngr.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract)))["state"]
                return from_payload(out, like)
            except Exception as e:  # noqa: PERF203 - orbax raises many types
                first = first or e
        raise first

    def _set_aside(self, good: int) -> list[str]:
        """Renames the step directories newer than ``good`` to ``<step>.unusable[.n]``."""
        moved = []
        for step in self.mngr.all_steps():
            if step > good:
                src, n = self.dir / str(step), 0
                dst = src.with_name(f"{step}.unusable")
                while dst.exists():
                    n += 1
                    dst = src.with_name(f"{step}.unusable.{n}")
                src.rename(dst)
                moved.append(dst.name)
        self.mngr.reload()
        return moved

    def close(self) -> None:
        # after a failed save, orbax's background writers may still be failing: not waited for
        if self._mngr is not None and not self._failed:
            self._mngr.close()


CONFIG_FILE = "config.json"


def state_digest(state) -> str | None:
    """sha256 over every array of ``state``: its tree path, dtype, shape and bytes, in tree
    order (zero-size leaves included). None where an array is not fully addressable from this
    process (multi-host: each process holds a part), which leaves the checkpoint unverified."""
    h = hashlib.sha256()
    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return None
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        a = np.ascontiguousarray(np.asarray(x))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# The lines of the tracebacks that a failed orbax restore makes tensorstore's callbacks print
# (into a closed asyncio loop): ~50 of them for one missing ``manifest.ocdbt``.
_NOISE = re.compile(r'Traceback \(most recent call last\):|  File ".*/asyncio/.*|    .*|'
                    r'RuntimeError: Event loop is closed')


def _os_error(e: BaseException, path: Path) -> BaseException:
    """``e`` as the ``OSError`` it stands for where orbax/tensorstore report one in a message
    (``"... No space left on device [os_error_code='28']"``), else ``e``."""
    if isinstance(e, OSError):
        return e
    m = re.search(r"os_error_code='?(\d+)", str(e))
    if m:
        code = int(m[1])
        return OSError(code, os.strerror(code), str(path))
    if "No space left on device" in str(e):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return e


class _Held(logging.Filter):
    def __init__(self):
        super().__init__()
        self.records: list = []
        self.text = io.StringIO()
        self.released = False

    def filter(self, record):
        self.records.append(record)
        return False

    def release(self):
        self.released = True


@contextlib.contextmanager
def _held_back_output():
    """Holds back what orbax prints and logs (absl) while a save runs: written out when the
    block calls ``release()`` (the save worked), dropped otherwise. A failed write (a full
    disk) makes orbax log the error from each of its threads, with tracebacks, for one
    failure that the caller reports in one line."""
    held = _Held()
    absl = logging.getLogger("absl")
    absl.addFilter(held)
    real, sys.stderr = sys.stderr, held.text
    try:
        yield held
    finally:
        sys.stderr = real
        absl.removeFilter(held)
        if held.released:
            if held.text.getvalue():
                real.write(held.text.getvalue())
            for record in held.records:
                absl.handle(record)


class _OrbaxTaskNoise(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" records for orbax's own restore
    tasks: a restore that fails (a damaged checkpoint) leaves its sibling tasks' errors
    unread, and asyncio logs each, with a traceback, whenever the task is garbage-collected,
    possibly long after :meth:`Checkpointer.restore` has reported the failure in one
    warning."""

    def filter(self, record):
        msg = record.getMessage()
        return not ("never retrieved" in msg and "orbax" in msg)


logging.getLogger("asyncio").addFilter(_OrbaxTaskNoise())


@contextlib.contextmanager
def _quiet_restore_noise():
    """Holds back what a restore prints to ``sys.stderr`` and writes it out without the
    "Event loop is closed" tracebacks of a damaged checkpoint, which
    :meth:`Checkpointer.restore` reports in one warning instead."""
    real, buf = sys.stderr, io.StringIO()
    sys.stderr = buf
    try:
        yield
    finally:
        gc.collect()        # a failed restore's unread tasks make their noise in here
        sys.stderr = real
        keep = [line for line in buf.getvalue().splitlines() if not _NOISE.fullmatch(line)]
        if keep:
            print("\n".join(keep), file=real)


def _options(keep: int) -> ocp.CheckpointManagerOptions:
    """Orbax options; in a multi-process run only process 0 makes a Checkpointer's manager
    (it saves host copies of the whole state), so orbax syncs over that one process."""
    if jax.process_count() == 1:
        return ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=False,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=jax.process_index(), active_processes={jax.process_index()}))


def _key_name(k) -> str:
    # DictKey.key, GetAttrKey.name (NamedTuple fields), SequenceKey.idx, FlattenedIndexKey.key
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _payload(state) -> dict:
    """``state`` as nested dicts keyed by its field names (``theta/nn/w0``, ``meta_opt_state
    /0/mu/...``), so a checkpoint describes itself. Orbax refuses zero-size arrays (the
    learned optimizer keeps empty placeholders for unfactored accumulators): those are left
    out and rebuilt from the structure at restore."""
    out: dict = {}
    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
        if not x.size:
            continue
        *parents, last = [_key_name(k) for k in path]
        node = out
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = x
    return out


def _unpayload(payload: dict, like):
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    if len(jax.tree.leaves(payload)) != sum(1 for _, x in flat if x.size):
        raise ValueError("checkpoint has a different structure (another config?)")
    out = []
    for path, x in flat:
        if not x.size:
            out.append(x)
            continue
        node = payload
        for k in path:
            if not isinstance(node, dict) or _key_name(k) not in node:
                raise ValueError(f"checkpoint has no {jax.tree_util.keystr(path)} "
                                 "(another config?)")
            node = node[_key_name(k)]
        out.append(node)
    _check_leaves(out, [x for _, x in flat])
    return jax.tree.unflatten(treedef, out)


def _payload_v1(state) -> dict:
    # The layout before the state was stored by field names: non-empty leaves by flat index.
    return {str(i): x for i, x in enumerate(jax.tree.leaves(state)) if x.size}


def _unpayload_v1(payload: dict, like):
    leaves, treedef = jax.tree.flatten(like)
    want = {str(i) for i, x in enumerate(leaves) if x.size}
    if set(payload) != want:
        raise ValueError("checkpoint has a different structure (another config?)")
    out = [payload[str(i)] if x.size else x for i, x in enumerate(leaves)]
    _check_leaves(out, leaves)
    return jax.tree.unflatten(treedef, out)


def _check_leaves(got, want) -> None:
    for a, b in zip(got, want):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"checkpoint array {a.shape}/{a.dtype} != expected "
                             f"{b.shape}/{b.dtype} (another config?)")


def _root_cause(e: BaseException) -> str:
    """The first line of the innermost error behind ``e``: orbax wraps tensorstore's
    "Data corruption detected" in an error that prints a bound method instead."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e)
    return text.splitlines()[0] if text else type(e).__name__
