"""One meta-training process per run directory: an exclusive lock on ``<out>/run.lock``.

A process that trains into ``--out`` holds an exclusive ``flock`` (:mod:`lopt.io.locks`) on
``<out>/run.lock`` for its whole life; a second process (another config, or the same one
started twice) stops with one line naming the holder's pid, before it writes anything. The
kernel drops the lock of a killed process, so a kill never blocks the resume; the file stays.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from lopt.io.locks import holder, mark_holder, try_lock

LOCK_FILE = "run.lock"


class RunDirError(ValueError):
    """The run directory cannot take this run: it holds another run (and no ``resume``), no
    run to resume, a run of another config, a run another process is training, or it cannot
    be written."""


_held: dict[str, list] = {}     # lock file -> [descriptor, depth]: the locks this process holds


@contextlib.contextmanager
def hold(out: str | os.PathLike):
    """Holds the exclusive lock of run directory ``out`` (created if missing) while entered;
    re-entrant within one process.

    Raises:
      RunDirError: another live process holds it (the message names its pid), or ``out``
        cannot be created or written (a regular file, a read-only directory).
    """
    out = Path(out)
    lock = out / LOCK_FILE
    key = os.path.realpath(lock)
    if key in _held:
        _held[key][1] += 1
    else:
        try:
            out.mkdir(parents=True, exist_ok=True)
            fd = try_lock(lock)
        except OSError as e:
            raise RunDirError(_unwritable(out, e)) from None
        if fd is None:
            raise RunDirError(f"{out} is in use: meta-training {holder(lock)} holds its lock "
                              f"({lock}); wait for that process to end or choose another "
                              "--out")
        try:
            mark_holder(fd)
        except OSError:
            pass            # a full disk: the lock is held all the same, the file names no one
        _held[key] = [fd, 1]
    try:
        yield
    finally:
        _held[key][1] -= 1
        if not _held[key][1]:
            os.close(_held.pop(key)[0])


def _unwritable(out: Path, e: OSError) -> str:
    if out.exists() and not out.is_dir():
        return f"--out {out} cannot hold a run: it is a file, not a directory; choose another --out"
    why = e.strerror or type(e).__name__
    if out.is_dir():    # a read-only mount, say: a run there is read with lopt.load(out)
        return (f"--out {out} cannot hold a run: cannot write into it ({why}); make it "
                "writable, or copy the run to a writable directory and pass that")
    return f"--out {out} cannot hold a run: cannot create it ({why}); choose another --out"
