"""Offline data: Fashion-MNIST (Debian package or a user directory), scikit-learn digits
(the embedded default), and character corpora (Debian fortunes, the Python standard library).

Nothing is ever downloaded. Images come back flattened, standardized (zero mean, unit
variance over the training set) and float32; labels int32. Arrays are cached per process.

Batching is index sampling on pre-loaded arrays, so it is deterministic given a key and
usable inside ``jit`` / ``lax.scan``.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
import sys
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

FMNIST_ENV = "MULO_FASHION_MNIST_DIR"
FMNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FORTUNES_DIRS = ("/usr/share/games/fortunes", "/usr/share/fortunes")
_FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class Split(NamedTuple):
    x: jax.Array  # [N, ...] float32 inputs (or int32 tokens)
    y: jax.Array  # [N] int32 labels (or [N, ctx] next tokens)


class Dataset(NamedTuple):
    train: Split
    test: Split
    num_classes: int
    source: str   # where the data came from, for reports


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an idx file (optionally gzipped) into a numpy array.

    Format: magic (0x00 0x00 dtype ndim), ndim big-endian uint32 dims, then the data.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
              0x0E: ">f8"}
    if zero != 0 or dtype_code not in dtypes:
        raise ValueError(f"{path}: not an idx file (bad magic)")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: truncated idx file ({data.size} of {np.prod(dims)} values)")
    return data.reshape(dims)


def fashion_mnist_dir() -> Path | None:
    """The directory holding the four Fashion-MNIST idx files, or None."""
    for d in (os.environ.get(FMNIST_ENV), FMNIST_SYSTEM_DIR):
        if not d:
            continue
        d = Path(d)
        if all(_find(d, name) for pair in _FMNIST_FILES.values() for name in pair):
            return d
    return None


def _find(d: Path, name: str) -> Path | None:
    for cand in (d / name, d / (name + ".gz")):
        if cand.is_file():
            return cand
    return None


@functools.lru_cache(maxsize=None)
def _fmnist_raw(d: str):
    out = {}
    for split, (xi, yi) in _FMNIST_FILES.items():
        out[split] = (read_idx(_find(Path(d), xi)), read_idx(_find(Path(d), yi)))
    return out


@functools.lru_cache(maxsize=None)
def _digits_raw():
    from sklearn.datasets import load_digits
    d = load_digits()
    x = d.images.astype(np.float32)          # [1797, 8, 8], values 0..16
    y = d.target.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = x[perm], y[perm]
    return {"train": (x[:1500], y[:1500]), "test": (x[1500:], y[1500:])}


_notice_shown = False


def _notice_fallback():
    global _notice_shown
    if not _notice_shown:
        print(f"notice: Fashion-MNIST not found; using scikit-learn digits. Get it with "
              f"`apt-get install dataset-fashion-mnist` or set {FMNIST_ENV}.", file=sys.stderr)
        _notice_shown = True


def _resize(images: np.ndarray, res: int) -> np.ndarray:
    if images.shape[1] == res:
        return images
    n = images.shape[0]
    out = jax.image.resize(jnp.asarray(images, jnp.float32), (n, res, res), "linear",
                           antialias=True)
    return np.asarray(out)


@functools.lru_cache(maxsize=None)
def image_dataset(name: str, resolution: int) -> Dataset:
    """Image classification data, flattened to [N, resolution**2].

    Args:
      name: ``fmnist`` (falls back to digits, with a notice, when not installed) or
        ``digits``.
      resolution: side length after area-antialiased resizing (e.g. 8, 14, 28).
    """
    if name not in ("fmnist", "digits"):
        raise ValueError(f"unknown image data set {name!r}; use 'fmnist' or 'digits'")
    raw, source = None, "sklearn-digits"
    if name == "fmnist":
        d = fashion_mnist_dir()
        if d is None:
            _notice_fallback()
        else:
            raw, source = _fmnist_raw(str(d)), f"fashion-mnist:{d}"
    if raw is None:
        raw = _digits_raw()
    xs = {s: _resize(raw[s][0].astype(np.float32), resolution) for s in ("train", "test")}
    mean, std = xs["train"].mean(), xs["train"].std()
    splits = {s: Split(jnp.asarray(((xs[s] - mean) / std).reshape(len(xs[s]), -1)),
                       jnp.asarray(raw[s][1].astype(np.int32))) for s in xs}
    return Dataset(splits["train"], splits["test"], 10, source)


def _fortunes_text() -> str | None:
    for d in FORTUNES_DIRS:
        p = Path(d)
        if not p.is_dir():
            continue
        files = sorted(f for f in p.iterdir()
                       if f.is_file() and f.suffix == "" and not f.name.startswith("."))
        text = "".join(f.read_text(encoding="latin-1") for f in files)
        if len(text) > 10_000:
            return text
    return None


def _stdlib_text(max_chars: int = 3_000_000) -> str:
    root = Path(os.__file__).parent
    parts, total = [], 0
    for f in sorted(root.glob("*.py")):
        t = f.read_text(encoding="utf-8", errors="replace")
        parts.append(t)
        total += len(t)
        if total >= max_chars:
            break
    return "".join(parts)


VOCAB = 128  # 7-bit ASCII; other bytes map to '?'


@functools.lru_cache(maxsize=None)
def text_dataset(name: str, context: int) -> Dataset:
    """Character-level LM data: windows of ``context + 1`` bytes (90% train / 10% test).

    Args:
      name: ``fortunes`` (Debian fortunes files; falls back to ``stdlib`` with a notice) or
        ``stdlib`` (the Python standard library's source).
      context: tokens per example.
    """
    if name not in ("fortunes", "stdlib"):
        raise ValueError(f"unknown text corpus {name!r}; use 'fortunes' or 'stdlib'")
    text, source = None, "python-stdlib"
    if name == "fortunes":
        text = _fortunes_text()
        if text is None:
            print("notice: fortunes not found; using the Python standard library source. "
                  "Get it with `apt-get install fortunes`.", file=sys.stderr)
        else:
            source = "debian-fortunes"
    if text is None:
        text = _stdlib_text()
    b = np.frombuffer(text.encode("latin-1", errors="replace"), np.uint8).astype(np.int32)
    b = np.where(b < VOCAB, b, ord("?"))
    cut = int(0.9 * len(b))
    return Dataset(Split(jnp.asarray(b[:cut]), jnp.zeros((0,), jnp.int32)),
                   Split(jnp.asarray(b[cut:]), jnp.zeros((0,), jnp.int32)), VOCAB, source)


def sample_images(split: Split, key: jax.Array, batch_size: int):
    """A batch (x, y) drawn uniformly with replacement; jittable."""
    idx = jax.random.randint(key, (batch_size,), 0, split.x.shape[0])
    return split.x[idx], split.y[idx]


def sample_text(split: Split, key: jax.Array, batch_size: int, context: int):
    """A batch of (tokens [B, ctx], next tokens [B, ctx]) windows; jittable."""
    start = jax.random.randint(key, (batch_size,), 0, split.x.shape[0] - context - 1)
    idx = start[:, None] + jnp.arange(context + 1)[None, :]
    w = split.x[idx]
    return w[:, :-1], w[:, 1:]
