"""Data sources: packaged Fashion-MNIST, the idx files, and no substitution under a name."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from meta_train import data as D
from meta_train import tasks as T
from needs_data import FMNIST, needs_data

ROOT = Path(__file__).resolve().parents[2]
IDX_DIR = D.fashion_mnist_dir()     # before any test hides it


@pytest.fixture
def no_idx_files(monkeypatch, tmp_path):
    """A machine without the Debian package or the user directory."""
    monkeypatch.setattr(D, "FMNIST_SYSTEM_DIR", str(tmp_path / "none"))
    monkeypatch.delenv(D.FMNIST_ENV, raising=False)
    D.image_dataset.cache_clear()
    yield
    D.image_dataset.cache_clear()


@needs_data(FMNIST)
def test_packaged_arrays_equal_the_idx_files_after_the_same_preprocessing(tmp_path):
    with np.load(D.packaged_path(8)) as f:
        packaged = {k: f[k] for k in f.files}
    derived = D.fmnist_arrays(IDX_DIR, 8)
    assert sorted(packaged) == sorted(derived) == ["x_test", "x_train", "y_test", "y_train"]
    for k in derived:
        assert packaged[k].dtype == derived[k].dtype == np.uint8
        np.testing.assert_array_equal(packaged[k], derived[k])
    assert packaged["x_train"].shape == (60000, 8, 8)
    # the uint8 images are the float resize rounded to the nearest integer
    resized = D._resize(D._fmnist_raw(str(IDX_DIR))["test"][0], 8)
    assert np.abs(resized - derived["x_test"]).max() <= 0.5
    np.testing.assert_array_equal(np.bincount(packaged["y_test"]), np.full(10, 1000))
    # the build script writes the same bytes as the shipped file
    assert D.main(["--build-packaged", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "fmnist8.npz").read_bytes() == D.packaged_path(8).read_bytes()


@needs_data(FMNIST)
def test_packaged_and_idx_paths_give_the_same_task_inputs(monkeypatch):
    D.image_dataset.cache_clear()
    try:
        packaged = D.image_dataset("fmnist", 8)
        monkeypatch.setattr(D, "PACKAGED_DIR", Path("/nonexistent"))
        D.image_dataset.cache_clear()
        derived = D.image_dataset("fmnist", 8)
    finally:
        D.image_dataset.cache_clear()
    assert packaged.source.endswith("(packaged)") and derived.source.endswith(f"({IDX_DIR})")
    for a, b in ((packaged.train, derived.train), (packaged.test, derived.test)):
        assert a.x.dtype == b.x.dtype == np.float32
        np.testing.assert_array_equal(np.asarray(a.x), np.asarray(b.x))
        np.testing.assert_array_equal(np.asarray(a.y), np.asarray(b.y))


def test_fmnist8_needs_no_system_package(no_idx_files):
    ds = D.image_dataset("fmnist", 8)
    assert ds.source == "fashion-mnist 8x8 (packaged)"
    assert ds.train.x.shape == (60000, 64) and ds.test.x.shape == (10000, 64)
    assert ds.train.x.dtype == np.float32
    x = np.asarray(ds.train.x)
    np.testing.assert_allclose([x.mean(), x.std()], [0.0, 1.0], atol=1e-4)
    np.testing.assert_array_equal(np.bincount(np.asarray(ds.train.y)), np.full(10, 6000))
    t = T.get_task("mlp-fmnist8-w32-d3")
    assert t.source == ds.source


@pytest.mark.parametrize("name", ["mlp-fmnist28-w32-d3", "mlp-fmnist14-w32-d3"])
def test_unpackaged_resolution_without_idx_files_raises_one_clear_error(no_idx_files, name):
    with pytest.raises(D.DataNotFoundError) as e:
        T.get_task(name)
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and D.FMNIST_ENV in msg
    assert "\n" not in msg


def test_cli_turns_missing_data_into_one_line(tmp_path):
    code = ("import sys; from meta_train import data as D, cli; "
            f"D.FMNIST_SYSTEM_DIR = {str(tmp_path / 'none')!r}; "
            "sys.exit(cli.main(sys.argv[1:]))")
    env = {k: v for k, v in os.environ.items() if k != D.FMNIST_ENV}
    r = subprocess.run([sys.executable, "-c", code, "--preset", "smoke", "--tasks",
                        "mlp-fmnist28-w32-d3", "--out", str(tmp_path / "run")], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert err[-1].startswith("error: Fashion-MNIST 28x28 needs the Fashion-MNIST idx files")
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


@needs_data(FMNIST)
def test_user_directory_serves_unpackaged_resolutions(no_idx_files, monkeypatch, tmp_path):
    d = tmp_path / "fm"
    d.mkdir()
    for f in IDX_DIR.glob("*-ubyte*"):
        (d / f.name).symlink_to(f)
    monkeypatch.setenv(D.FMNIST_ENV, str(d))
    ds = D.image_dataset("fmnist", 14)
    assert ds.source == f"fashion-mnist 14x14 ({d})"
    assert ds.train.x.shape == (60000, 196)


def test_digits_is_its_own_task_and_never_an_fmnist_one(no_idx_files):
    digits = T.get_task("mlp-digits8-w32-d2")
    fm = T.get_task("mlp-fmnist8-w32-d2")
    assert digits.source == "sklearn-digits 8x8"
    assert digits.data["train"].x.shape == (1500, 64)
    assert fm.source.startswith("fashion-mnist") and fm.data["train"].x.shape[0] == 60000


def test_fortunes_is_never_replaced_by_another_corpus(monkeypatch, tmp_path):
    monkeypatch.setattr(D, "FORTUNES_DIRS", (str(tmp_path),))
    D.text_dataset.cache_clear()
    try:
        with pytest.raises(D.DataNotFoundError, match="apt-get install fortunes"):
            D.text_dataset("fortunes", 16)
        assert D.text_dataset("stdlib", 16).source == "python-stdlib"
    finally:
        D.text_dataset.cache_clear()


def _write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    import gzip
    import struct
    raw = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) \
        + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def _fake_fmnist(d: Path, n_train=12, n_test=6, labels=None):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        xi, yi = D._FMNIST_FILES[split]
        _write_idx(d / xi, rng.integers(0, 255, (n, 28, 28)))
        _write_idx(d / yi, rng.integers(0, 10, n) if labels is None else labels[split])


def test_idx_reader_names_the_file_for_every_kind_of_damage(tmp_path):
    good = _write_idx(tmp_path / "a", np.arange(24).reshape(2, 3, 4))
    np.testing.assert_array_equal(D.read_idx(good), np.arange(24).reshape(2, 3, 4))
    cases = {"header": good.read_bytes()[:6], "body": good.read_bytes()[:-5],
             "magic": b"\x01\x02" + good.read_bytes()[2:], "extra": good.read_bytes() + b"xx"}
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(D.DataError, match=str(tmp_path / name)):
            D.read_idx(tmp_path / name)
    gz = _write_idx(tmp_path / "z", np.arange(24).reshape(2, 3, 4), gz=True)
    np.testing.assert_array_equal(D.read_idx(gz), np.arange(24).reshape(2, 3, 4))
    gz.write_bytes(gz.read_bytes()[:-12])           # a gzip stream cut short
    with pytest.raises(D.DataError, match="z.gz: unreadable"):
        D.read_idx(gz)


def test_misaligned_or_out_of_range_labels_are_refused(tmp_path):
    short = tmp_path / "short"
    short.mkdir()
    _fake_fmnist(short, labels={"train": np.zeros(11), "test": np.zeros(6)})
    with pytest.raises(D.DataError, match="11 labels for the 12 images"):
        D._fmnist_raw(str(short))
    wide = tmp_path / "wide"
    wide.mkdir()
    _fake_fmnist(wide, labels={"train": np.full(12, 10), "test": np.zeros(6)})
    with pytest.raises(D.DataError, match=r"labels must be in 0..9, found 10..10"):
        D._fmnist_raw(str(wide))
    ok = tmp_path / "ok"
    ok.mkdir()
    _fake_fmnist(ok)
    assert D._fmnist_raw(str(ok))["train"][0].shape == (12, 28, 28)


def test_a_user_directory_missing_a_file_is_named(no_idx_files, monkeypatch, tmp_path):
    _fake_fmnist(tmp_path)
    (tmp_path / D._FMNIST_FILES["test"][1]).unlink()
    monkeypatch.setenv(D.FMNIST_ENV, str(tmp_path))
    assert D.fashion_mnist_dir() is None
    with pytest.raises(D.DataNotFoundError,
                       match=f"{D.FMNIST_ENV}={tmp_path} lacks t10k-labels-idx1-ubyte"):
        D.image_dataset("fmnist", 28)
