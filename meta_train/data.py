"""Offline data: Fashion-MNIST, scikit-learn digits and character corpora.

Nothing is ever downloaded, and a task name never labels other data than it names:

* ``fmnist`` at 8x8 ships inside the package (``meta_train/fmnist/``, derived from the
  Debian idx files by ``python -m meta_train.data --build-packaged``); other resolutions
  (14x14, 28x28) read the idx files from ``$MULO_FASHION_MNIST_DIR`` or the Debian package
  ``dataset-fashion-mnist``, and raise :class:`DataNotFoundError` naming both when absent.
  At every resolution the task's images are defined as uint8: the 28x28 idx images resized
  (linear, antialiased) and rounded to 0..255. The packaged file stores exactly these, so the
  packaged and the idx path give the same arrays by construction.
* ``digits`` (scikit-learn's 1,797 8x8 images) ships with scikit-learn.
* ``fortunes`` (Debian ``fortunes``) raises :class:`DataNotFoundError` when absent;
  ``stdlib`` (the Python standard library's source) is always there.

Images come back flattened, standardized (zero mean, unit variance over the training set)
and float32; labels int32. Every :class:`Dataset` records its ``source``. Arrays are cached
per process. Batching is index sampling on pre-loaded arrays, so it is deterministic given a
key and usable inside ``jit`` / ``lax.scan``.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import os
import struct
import sys
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

FMNIST_ENV = "MULO_FASHION_MNIST_DIR"
FMNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
PACKAGED_DIR = Path(__file__).resolve().parent / "fmnist"
FORTUNES_DIRS = ("/usr/share/games/fortunes", "/usr/share/fortunes")
_FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
# Resolutions built into the package by default: 8x8 uint8 is 3.8 MB compressed; 14x14
# would add 9.9 MB (measured), so it stays with the idx files like 28x28.
PACKAGED_RESOLUTIONS = (8,)


class DataNotFoundError(FileNotFoundError):
    """A task's data set is not on this machine (and nothing else is substituted)."""


class DataError(ValueError):
    """A data file is there but unusable (bad header, truncated, misaligned labels); the
    message names the file."""


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

    Raises:
      DataError: the file is not an idx file, is truncated, or its gzip stream is damaged;
      the message names the file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:   # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: truncated idx header ({len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
              0x0E: ">f8"}
    if zero != 0 or dtype_code not in dtypes or ndim == 0:
        raise DataError(f"{path}: not an idx file (bad magic)")
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated idx header ({len(raw)} bytes for {ndim} dims)")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    itemsize = np.dtype(dtypes[dtype_code]).itemsize
    body = raw[4 + 4 * ndim:]
    want = int(np.prod(dims))
    if len(body) != want * itemsize:
        raise DataError(f"{path}: truncated idx file ({len(body) // itemsize} of {want} "
                        "values)" if len(body) < want * itemsize else
                        f"{path}: {len(body) - want * itemsize} bytes after the {want} values")
    return np.frombuffer(body, dtype=dtypes[dtype_code]).reshape(dims)


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
    """The four Fashion-MNIST idx files in ``d``, checked: [N, H, W] uint8 images, [N]
    labels in 0..9, as many labels as images (misaligned labels would train silently)."""
    out = {}
    for split, (xi, yi) in _FMNIST_FILES.items():
        xf, yf = _find(Path(d), xi), _find(Path(d), yi)
        x, y = read_idx(xf), read_idx(yf)
        if x.ndim != 3 or x.dtype != np.uint8:
            raise DataError(f"{xf}: expected [N, H, W] uint8 images, got {x.shape} {x.dtype}")
        if y.ndim != 1:
            raise DataError(f"{yf}: expected [N] labels, got shape {y.shape}")
        if len(y) != len(x):
            raise DataError(f"{yf}: {len(y)} labels for the {len(x)} images of {xf.name}; "
                            "the files do not belong together")
        if y.size and (int(y.min()) < 0 or int(y.max()) >= 10):
            raise DataError(f"{yf}: labels must be in 0..9, found {int(y.min())}.."
                            f"{int(y.max())}")
        out[split] = (x, y)
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


def _resize(images: np.ndarray, res: int) -> np.ndarray:
    """Linear, antialiased (area-weighted) resize of [N, H, W] images to [N, res, res]
    float32."""
    if images.shape[1] == res:
        return images.astype(np.float32)
    n = images.shape[0]
    out = jax.image.resize(jnp.asarray(images, jnp.float32), (n, res, res), "linear",
                           antialias=True)
    return np.asarray(out)


def fmnist_arrays(d: str | os.PathLike, resolution: int) -> dict:
    """Fashion-MNIST from the idx files in ``d`` as the tasks define it (before
    standardization): ``{"x_train": [60000, r, r] uint8, "y_train": [60000] uint8,
    "x_test": [10000, r, r] uint8, "y_test": [10000] uint8}``. The 28x28 images are resized
    linearly with antialiasing (area-weighted) on the raw 0..255 values, then rounded to the
    nearest integer (``np.rint``, clipped to 0..255). This is also what the packaged files
    store."""
    raw = _fmnist_raw(str(d))
    out = {}
    for split in ("train", "test"):
        x = raw[split][0]
        if x.shape[1] != resolution:
            x = np.clip(np.rint(_resize(x, resolution)), 0, 255)
        out[f"x_{split}"] = x.astype(np.uint8)
        out[f"y_{split}"] = raw[split][1].astype(np.uint8)
    return out


def packaged_path(resolution: int) -> Path:
    return PACKAGED_DIR / f"fmnist{resolution}.npz"


def write_packaged(arrays: dict, path: str | os.PathLike) -> Path:
    """Writes ``arrays`` as a compressed .npz, the format of ``np.savez_compressed``, but
    with fixed timestamps (``np.savez_compressed`` stamps the current time), so every build
    writes the same bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]),
                                          allow_pickle=False)
    tmp.replace(path)
    return path


def build_packaged(resolutions=PACKAGED_RESOLUTIONS, src: str | os.PathLike | None = None,
                   out_dir: str | os.PathLike = PACKAGED_DIR) -> list[Path]:
    """Derives the packaged arrays from the idx files (``src``, default: the user
    directory or the Debian package): the uint8 images of :func:`fmnist_arrays`."""
    src = Path(src) if src else fashion_mnist_dir()
    if src is None:
        raise DataNotFoundError(_fmnist_missing("building the packaged arrays"))
    return [write_packaged(fmnist_arrays(src, r), Path(out_dir) / f"fmnist{r}.npz")
            for r in resolutions]


def _fmnist_missing(what: str) -> str:
    user = os.environ.get(FMNIST_ENV)
    if user:
        lacking = [n for pair in _FMNIST_FILES.values() for n in pair if not _find(Path(user), n)]
        return (f"{what} needs the Fashion-MNIST idx files: {FMNIST_ENV}={user} lacks "
                f"{', '.join(lacking) or 'nothing'} (each may also be gzipped, '.gz'); add "
                "them there, or unset it to use the Debian package dataset-fashion-mnist")
    return (f"{what} needs the Fashion-MNIST idx files: `apt-get install "
            f"dataset-fashion-mnist` or set {FMNIST_ENV} to a directory holding the four "
            f"idx files (only {', '.join(f'{r}x{r}' for r in packaged_resolutions()) or 'none'}"
            " ships with the package)")


def packaged_resolutions() -> tuple[int, ...]:
    """Resolutions whose Fashion-MNIST arrays ship inside the package."""
    return tuple(r for r in (8, 14, 28) if packaged_path(r).is_file())


def _fmnist_source(resolution: int) -> tuple[dict, str]:
    """(arrays as :func:`fmnist_arrays`, source): packaged first, then the idx files."""
    path = packaged_path(resolution)
    if path.is_file():
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        if any(a.dtype != np.uint8 for a in arrays.values()):
            raise ValueError(f"{path}: expected uint8 arrays; rebuild it with "
                             "`python -m meta_train.data --build-packaged`")
        return arrays, f"fashion-mnist {resolution}x{resolution} (packaged)"
    d = fashion_mnist_dir()
    if d is None:
        raise DataNotFoundError(_fmnist_missing(f"Fashion-MNIST {resolution}x{resolution}"))
    return fmnist_arrays(d, resolution), f"fashion-mnist {resolution}x{resolution} ({d})"


def _standardize(x_train: np.ndarray, y_train, x_test: np.ndarray, y_test) -> tuple:
    """Flattened float32 inputs with zero mean and unit variance over the training set (one
    scalar mean and std, computed in float32), and int32 labels."""
    x_train, x_test = x_train.astype(np.float32), x_test.astype(np.float32)
    mean, std = x_train.mean(), x_train.std()
    return tuple(Split(jnp.asarray(((x - mean) / std).reshape(len(x), -1)),
                       jnp.asarray(y.astype(np.int32)))
                 for x, y in ((x_train, y_train), (x_test, y_test)))


@functools.lru_cache(maxsize=None)
def image_dataset(name: str, resolution: int) -> Dataset:
    """Image classification data, flattened to [N, resolution**2].

    Args:
      name: ``fmnist`` or ``digits``.
      resolution: side length after area-antialiased resizing (e.g. 8, 14, 28); for
        Fashion-MNIST the resized images are rounded to uint8 before standardization.

    Raises:
      DataNotFoundError: Fashion-MNIST at a resolution that is not packaged, without the
        idx files.
    """
    if name == "fmnist":
        a, source = _fmnist_source(resolution)
        train, test = _standardize(a["x_train"], a["y_train"], a["x_test"], a["y_test"])
    elif name == "digits":
        raw = _digits_raw()
        x = {s: _resize(raw[s][0], resolution) for s in ("train", "test")}
        train, test = _standardize(x["train"], raw["train"][1], x["test"], raw["test"][1])
        source = f"sklearn-digits {resolution}x{resolution}"
    else:
        raise ValueError(f"unknown image data set {name!r}; use 'fmnist' or 'digits'")
    return Dataset(train, test, 10, source)


def _fortune_files(d: Path) -> list[Path]:
    return sorted(f for f in d.iterdir()
                  if f.is_file() and f.suffix == "" and not f.name.startswith("."))


def fortunes_dir() -> Path | None:
    """The directory holding the Debian ``fortunes`` text files (over 10k characters in
    all), or None when the package is not installed."""
    for d in map(Path, FORTUNES_DIRS):
        if d.is_dir() and sum(f.stat().st_size for f in _fortune_files(d)) > 10_000:
            return d
    return None


def _fortunes_text() -> str | None:
    d = fortunes_dir()
    if d is None:
        return None
    return "".join(f.read_text(encoding="latin-1") for f in _fortune_files(d))


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
      name: ``fortunes`` (Debian fortunes files) or ``stdlib`` (the Python standard
        library's source).
      context: tokens per example.

    Raises:
      DataNotFoundError: ``fortunes`` without the Debian package.
    """
    if name == "fortunes":
        text, source = _fortunes_text(), "debian-fortunes"
        if text is None:
            raise DataNotFoundError(
                "the fortunes corpus is not installed: `apt-get install fortunes` (or "
                "fortunes-min), or use the embedded corpus (task names lm-stdlib-...)")
    elif name == "stdlib":
        text, source = _stdlib_text(), "python-stdlib"
    else:
        raise ValueError(f"unknown text corpus {name!r}; use 'fortunes' or 'stdlib'")
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m meta_train.data",
        description="Build the Fashion-MNIST arrays that ship inside the package "
                    f"({PACKAGED_DIR}) from the idx files, with the tasks' preprocessing.")
    ap.add_argument("--build-packaged", action="store_true",
                    help="write fmnist<R>.npz for each --resolutions into --out")
    ap.add_argument("--resolutions", default=",".join(map(str, PACKAGED_RESOLUTIONS)),
                    help="comma-separated side lengths (default %(default)s)")
    ap.add_argument("--src", default=None,
                    help=f"directory of the four idx files (default ${FMNIST_ENV}, then "
                         f"{FMNIST_SYSTEM_DIR})")
    ap.add_argument("--out", default=str(PACKAGED_DIR), help="output directory")
    args = ap.parse_args(argv)
    if not args.build_packaged:
        ap.print_help()
        return 0
    try:
        res = [int(r) for r in args.resolutions.split(",") if r]
        paths = build_packaged(res, args.src, args.out)
    except (DataNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(f"wrote {p} ({p.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
