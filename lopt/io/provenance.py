"""Provenance of results and checkpoints: the code's commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def commit() -> str:
    """The short git commit of this source tree, or "unknown" outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, timeout=10).stdout.strip() \
            or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def host() -> str:
    """One line naming this machine: CPU, core count, JAX devices, OS and Python."""
    import jax
    devices = sorted({f"{d.platform}:{getattr(d, 'device_kind', '?')}" for d in jax.devices()})
    return (f"{platform.machine()} CPU, {os.cpu_count()} cores, JAX devices "
            f"{', '.join(devices)} ({platform.system()} {platform.release()}; "
            f"Python {platform.python_version()})")
