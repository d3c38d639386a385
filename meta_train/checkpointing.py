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

Checkpoints written before this layout (state leaves keyed by flat index, ``lopt`` and
``config`` as orbax JSON items) still restore and load.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from lopt.checkpoint import LOPT_FILE, CheckpointError, write_json


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        self.dir = Path(directory).absolute()
        self._mngr = None
        self._keep = keep

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
        return None

    def save(self, step: int, state: dict, lopt_doc: dict, config: dict,
             force: bool = False) -> None:
        """Saves ``step`` and waits until it is on disk; a step already saved is kept."""
        if step in self.mngr.all_steps():
            return
        self.mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_payload(state))), force=force)
        self.mngr.wait_until_finished()
        for name, doc in ((LOPT_FILE, lopt_doc), (CONFIG_FILE, config)):
            write_json(self.dir / str(step) / name, doc)

    def restore(self, like: dict) -> dict:
        """Restores the newest restorable checkpoint into the structure of ``like``.

        Raises:
          CheckpointError: no checkpoint restores (the message names each one and why).
        """
        errors = []
        for step in sorted(self.mngr.all_steps(), reverse=True):
            try:
                out = self._restore_step(step, like)
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

    def _restore_step(self, step: int, like: dict) -> dict:
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
        if self._mngr is not None:
            self._mngr.close()


CONFIG_FILE = "config.json"


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
