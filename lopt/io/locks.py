"""Exclusive ``flock`` locks on files, shared by the eval suite's group cache and by
meta-training runs (one process per run directory).

A lock is held by an open file descriptor; the kernel drops it when the descriptor is closed
or its process dies (a killed run blocks no one). The lock file names its holder (pid, host,
since when) for messages; flock between machines on a network file system is not relied on.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path


def try_lock(path: Path) -> int | None:
    """A file descriptor holding an exclusive ``flock`` on ``path`` (created if missing), or
    None when another open file holds it. The kernel drops the lock when its process dies, so
    a killed run leaves nothing that blocks others (its file stays, unlocked).

    Raises:
      OSError: ``path`` cannot be created or opened (a read-only or missing directory).
    """
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:        # the holder before us may have removed the file after we opened it
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def mark_holder(fd: int) -> None:
    """Writes this process (pid, host, since when) into the lock file held by ``fd``."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "since": time.time()}).encode(), 0)


def is_held(path: Path) -> bool:
    """Whether a live process (or another thread here) holds ``path``'s lock."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)        # closing drops the shared lock if it was taken


def holder(path: Path) -> str:
    """Who holds a lock, as its file says (pid, host, since when), for messages."""
    try:
        info = json.loads(Path(path).read_text())
        return (f"pid {info['pid']} on {info['host']} since "
                f"{time.strftime('%H:%M:%S', time.localtime(info['since']))}")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
