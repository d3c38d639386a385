"""Orbax checkpoints of a meta-training run, with fallback past corrupt ones.

Each step directory holds three items: ``state`` (theta, meta-optimizer state, estimator
states, PRNG key, step), ``lopt`` (theta + LOConfig as JSON, what ``lopt.load`` reads) and
``config``. Orbax writes to a temporary directory and renames it on commit, so a
half-written checkpoint is never listed; a committed one that fails to restore (corrupt
files) is skipped with a warning and the previous one is used; the skipped one is moved
aside to ``<step>.unusable`` (orbax would otherwise never save a step at or below it), so
training rewrites its step when it gets there again.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from lopt.checkpoint import CheckpointError


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        self.dir = Path(directory).absolute()
        self._mngr = None
        self._keep = keep

    @property
    def mngr(self) -> ocp.CheckpointManager:
        if self._mngr is None:
            self._mngr = ocp.CheckpointManager(
                self.dir, options=ocp.CheckpointManagerOptions(max_to_keep=self._keep,
                                                               create=True))
        return self._mngr

    def has_checkpoints(self) -> bool:
        return self.dir.is_dir() and any(p.name.isdigit() for p in self.dir.iterdir())

    def saved_config(self) -> dict | None:
        """The run config stored with the newest checkpoint whose ``config`` item reads as
        JSON (None when there is none); reads files only, without orbax."""
        if not self.dir.is_dir():
            return None
        steps = sorted((p for p in self.dir.iterdir() if p.name.isdigit()),
                       key=lambda p: int(p.name), reverse=True)
        for step in steps:
            try:
                doc = json.loads((step / "config" / "metadata").read_text())
            except (OSError, ValueError):   # ValueError: bad JSON or bad UTF-8
                continue
            if isinstance(doc, dict):
                return doc
        return None

    def save(self, step: int, state: dict, lopt_doc: dict, config: dict,
             force: bool = False) -> None:
        """Saves ``step`` and waits until it is on disk; a step already saved is kept."""
        if step in self.mngr.all_steps():
            return
        self.mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_payload(state)), lopt=ocp.args.JsonSave(lopt_doc),
            config=ocp.args.JsonSave(config)), force=force)
        self.mngr.wait_until_finished()

    def restore(self, like: dict) -> dict:
        """Restores the newest restorable checkpoint into the structure of ``like``.

        Raises:
          CheckpointError: no checkpoint restores (the message names each one and why).
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _payload(like))
        errors = []
        for step in sorted(self.mngr.all_steps(), reverse=True):
            try:
                out = self.mngr.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract)))["state"]
                out = _unpayload(out, like)
            except Exception as e:  # orbax raises many types for damaged files
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                errors.append(f"{self.dir / str(step)}: {msg[:200]}")
                continue
            if errors:
                moved = self._set_aside(step)
                warnings.warn(f"checkpoint(s) unusable, resumed from step {step} instead: "
                              + "; ".join(errors) + f" (moved to {', '.join(moved)})")
            return out
        raise CheckpointError(f"no restorable checkpoint in {self.dir}: " + "; ".join(errors))

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
        if self._mngr is not None:
            self._mngr.close()


def _payload(state) -> dict:
    # Orbax refuses zero-size arrays (the learned optimizer keeps empty placeholders for
    # unfactored accumulators): save the non-empty leaves by flat index; the empty ones are
    # rebuilt from the structure at restore.
    return {str(i): x for i, x in enumerate(jax.tree.leaves(state)) if x.size}


def _unpayload(payload: dict, like):
    leaves, treedef = jax.tree.flatten(like)
    want = {str(i) for i, x in enumerate(leaves) if x.size}
    if set(payload) != want:
        raise ValueError("checkpoint has a different structure (another config?)")
    out = [payload[str(i)] if x.size else x for i, x in enumerate(leaves)]
    for a, b in zip(out, leaves):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"checkpoint array {a.shape}/{a.dtype} != expected "
                             f"{b.shape}/{b.dtype} (another config?)")
    return jax.tree.unflatten(treedef, out)
