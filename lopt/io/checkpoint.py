"""Saving and loading trained learned optimizers.

A learned optimizer on disk is one small JSON document (theta is ~2.4k numbers)::

    {"format": "mulo-lopt-v1", "config": {LOConfig fields}, "theta": {...}, "meta": {...},
     "sha256": "..."}

``sha256`` is the digest of the rest of the document (:func:`doc_digest`), written with it
and checked when it is read: a damaged file fails to load (a run directory then falls back
to its previous step, with a warning) instead of loading other numbers. Documents without
it (the shipped checkpoints, runs written before it) load unverified.

A (μ)VeLO is stored the same way; its config carries ``"arch": "velo"`` and the
:class:`lopt.learned.velo.VeLOConfig` fields.

It lives as ``lopt.json`` in a shipped checkpoint directory and in every step directory of
a meta-training run (``<run>/checkpoints/<step>/lopt.json``; runs written before that keep
it as ``<step>/lopt/metadata``, which still loads), so :func:`load` accepts any of:

* a shipped checkpoint name (``"mulo-cpu"``, see ``checkpoints/``) or its directory;
* a meta-training run directory (takes the newest complete checkpoint, falling back to
  older ones with a warning if the newest is unreadable);
* one orbax step directory, or a ``lopt.json`` file.

float32 values are written as the decimal repr of their exact (float64) value, which reads
back to the same float32, so save/load is exact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from lopt.learned.mulo import LOConfig, adam_theta, extend_theta
from lopt.learned.registry import check_theta, config_from_dict, init_theta, make_from_config

FORMAT = "mulo-lopt-v1"
LOPT_FILE = "lopt.json"
# where meta-training checkpoints written before ``<step>/lopt.json`` keep the same document
# (orbax's JSON item layout)
OLD_STEP_FILE = Path("lopt") / "metadata"


class CheckpointError(ValueError):
    """A checkpoint path that cannot be used; the message says why and what to do."""


def shipped_dir() -> Path:
    """Directory of the checkpoints that ship with the project: ``checkpoints/`` of a source
    checkout (or editable install), else ``<prefix>/share/mulo/checkpoints`` where a wheel
    install puts them (pyproject's data-files)."""
    import sysconfig
    source = Path(__file__).resolve().parents[2] / "checkpoints"
    installed = Path(sysconfig.get_path("data")) / "share" / "mulo" / "checkpoints"
    for d in (source, installed):
        if d.is_dir() and any((x / LOPT_FILE).is_file() for x in d.glob("*")):
            return d
    return source


def to_json(theta: Any, config: LOConfig, meta: Mapping[str, Any] | None = None) -> dict:
    """The JSON document for (theta, config), with its digest (``sha256``)."""
    def enc(x):
        a = np.asarray(x, np.float32)
        return {"shape": list(a.shape), "values": [float(v) for v in a.ravel()]}
    doc = {"format": FORMAT, "config": config.to_dict(),
           "theta": jax.tree.map(enc, jax.device_get(theta)), "meta": dict(meta or {})}
    return {**doc, "sha256": doc_digest(doc)}


def doc_digest(doc: Mapping[str, Any]) -> str:
    """sha256 of a learned-optimizer document without its ``sha256`` field, over its
    canonical JSON (sorted keys; floats as the shortest decimal that round-trips, so the
    digest of a document read back equals the one written)."""
    body = json.loads(json.dumps({k: v for k, v in doc.items() if k != "sha256"}))
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def from_json(doc: Mapping[str, Any], source: str = "checkpoint"):
    """Parses the JSON document; returns (theta, config, meta)."""
    if not isinstance(doc, Mapping) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{source}: not a μLO learned-optimizer checkpoint "
                              f"(expected format {FORMAT!r})")
    if "sha256" in doc and doc["sha256"] != doc_digest(doc):
        raise CheckpointError(f"{source}: damaged learned-optimizer checkpoint (its content "
                              "does not match the sha256 written with it)")
    try:
        config = config_from_dict(doc["config"])
        is_arr = lambda x: isinstance(x, Mapping) and set(x) == {"shape", "values"}
        theta = jax.tree.map(
            lambda x: np.asarray(x["values"], np.float32).reshape(x["shape"]),
            doc["theta"], is_leaf=is_arr)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: corrupt learned-optimizer checkpoint ({e})") from None
    try:
        check_theta(theta, config)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    if not all(np.all(np.isfinite(x)) for x in jax.tree.leaves(theta)):
        raise CheckpointError(f"{source}: theta contains NaN/inf")
    return theta, config, dict(doc.get("meta", {}))


def save(path: str | os.PathLike, theta: Any, config: LOConfig,
         meta: Mapping[str, Any] | None = None) -> Path:
    """Writes ``<path>/lopt.json`` atomically (a crash never leaves a half-written file)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / LOPT_FILE, to_json(theta, config, meta))
    return path / LOPT_FILE


def write_json(file: str | os.PathLike, doc: Any, indent: int | None = None) -> None:
    """Writes ``doc`` as JSON to ``file`` atomically: a crash leaves the old file or none,
    never a half-written one, and a failed write (a full disk) leaves no temporary file.

    Raises:
      OSError: the file cannot be written (the old one, if any, is left as it was).
    """
    file = Path(file)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=indent)
        os.chmod(tmp, 0o644)   # mkstemp creates 0600; a checkpoint is meant to be shared
        os.replace(tmp, file)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read(file: Path):
    try:
        doc = json.loads(file.read_text())
    except (OSError, ValueError) as e:   # ValueError: bad JSON or bytes that are not UTF-8
        raise CheckpointError(f"{file}: unreadable checkpoint ({type(e).__name__})") from None
    return from_json(doc, str(file))


def _step_dirs(d: Path) -> list[Path]:
    # Orbax writes to "<step>.orbax-checkpoint-tmp-*" and renames on commit: only
    # all-digit names are finished checkpoints.
    return sorted((p for p in d.iterdir() if p.is_dir() and p.name.isdigit()),
                  key=lambda p: int(p.name))


def _resolve(path: Path):
    if path.is_file():
        return _read(path)
    if (path / LOPT_FILE).is_file():
        return _read(path / LOPT_FILE)
    if (path / OLD_STEP_FILE).is_file():
        return _read(path / OLD_STEP_FILE)
    for sub in (path, path / "checkpoints"):
        if sub.is_dir() and (steps := _step_dirs(sub)):
            errors = []
            for step in reversed(steps):
                try:
                    old = step / OLD_STEP_FILE
                    out = _read(old if old.is_file() and not (step / LOPT_FILE).exists()
                                else step / LOPT_FILE)
                except CheckpointError as e:
                    errors.append(str(e))
                    continue
                if errors:
                    warnings.warn(f"skipped unusable newer checkpoint(s): {'; '.join(errors)}; "
                                  f"using step {step.name}")
                return out
            raise CheckpointError(f"{path}: no usable checkpoint ({'; '.join(errors)})")
    raise CheckpointError(f"{path}: no learned-optimizer checkpoint here (expected "
                          f"{LOPT_FILE}, an orbax step directory, or a meta-training run)")


def load_theta(path: str | os.PathLike):
    """Loads (theta, config, meta) from a path or shipped checkpoint name; config is an
    :class:`LOConfig` or a :class:`lopt.learned.velo.VeLOConfig`."""
    p = Path(path).expanduser()
    if not p.exists():
        # a shipped name, also written as "checkpoints/<name>" from outside the source tree
        name = str(path).removeprefix("checkpoints/").rstrip("/")
        shipped = shipped_dir() / name
        if shipped.exists():
            p = shipped
        else:
            names = sorted(x.name for x in shipped_dir().glob("*") if (x / LOPT_FILE).is_file())
            raise CheckpointError(f"checkpoint {str(path)!r} not found: give a path or one of "
                                  f"the shipped names {names}")
    return _resolve(p)


# init_from value: start a compact LO at its hand-set Adam direction
ADAM_START = "adam"


def start_theta(key: jax.Array, config, init_from: str = ""):
    """The theta a meta-training run starts from: ``init_theta(key, config)``, or, with
    ``init_from`` (a shipped name, run or checkpoint), that learned optimizer's theta, its
    MLP extended to ``config``'s inputs (:func:`lopt.learned.extend_theta`); with
    ``init_from="adam"`` a compact LO's hand-set Adam direction (:func:`lopt.adam_theta`),
    untrained and the same for every key. The one
    definition of an LO "before meta-training" (``meta_train.loop``, the eval suite's
    untrained rows).

    Raises:
      CheckpointError: ``init_from`` cannot be loaded.
      ValueError: ``init_from`` is another architecture, or its theta does not fit ``config``;
        ``"adam"`` for a config that is not compact.
    """
    import jax.numpy as jnp
    if not init_from:
        return init_theta(key, config)
    if init_from == ADAM_START:
        return adam_theta(config)
    start, start_cfg, _ = load_theta(init_from)
    if start_cfg.arch != config.arch:
        raise ValueError(f"init_from={init_from!r} is a {start_cfg.arch!r} learned optimizer; "
                         f"this run trains a {config.arch!r} one")
    theta = (extend_theta(start, start_cfg, config) if config.arch == "mlp"
             else jax.tree.map(jnp.asarray, start))
    check_theta(theta, config)
    return theta


def load(path: str | os.PathLike, *, roles: Any = None,
         role_overrides: Mapping[str, str] | None = None, mup_in: str = "optimizer",
         num_steps: int | None = None):
    """Loads a trained learned optimizer as an ``optax.GradientTransformationExtraArgs``.

    Args:
      path: shipped checkpoint name, run directory, step directory or ``lopt.json``.
      roles: optional μP role tree of the optimizee (inferred if None).
      role_overrides: ``{regex: role}`` overrides for the inference.
      mup_in: ``"optimizer"`` (plain models; default) or ``"model"`` (models with a
        ``1/fan_in`` readout multiplier); see :func:`lopt.make`.
      num_steps: the run's total number of updates, for optimizers whose config needs it
        (``LOConfig.needs_num_steps``; e.g. fraction-of-training features).
    """
    theta, config, _ = load_theta(path)
    return make_from_config(theta, config, roles=roles, role_overrides=role_overrides,
                            mup_in=mup_in, num_steps=num_steps)


def describe_roles(params: Any, roles: Any = None, overrides: Mapping[str, str] | None = None,
                   mup: bool = True, *, lo: Any = None) -> str:
    """:func:`lopt.mup.roles.describe_roles`, where ``lo`` may also be a learned optimizer by
    shipped name or path (its stored config is read here, so :mod:`lopt.mup.roles` needs no
    checkpoint code)."""
    from lopt.mup import roles as R
    if lo is not None and not hasattr(lo, "mup_base"):
        lo = load_theta(lo)[1]
    return R.describe_roles(params, roles, overrides, mup, lo=lo)
