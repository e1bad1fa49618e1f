"""MNIST loading (lookup order, checksums, corrupt files, verified download from a local mirror)
and the spiral datasets."""

import gzip
import math
import os
import shutil

import pytest
import torch

import neuralode.data as data
from neuralode.data import DataError, find_mnist, load_mnist

# class counts from shared/data/mnist/README.md
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist(data_dir):
    return load_mnist(data_dir, download=False)


def test_real_mnist_loads_into_memory(mnist):
    train, test = mnist
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert torch.bincount(train.y).tolist() == TRAIN_COUNTS
    assert torch.bincount(test.y).tolist() == TEST_COUNTS
    assert abs(float(train.x.mean())) < 0.01 and abs(float(train.x.std()) - 1) < 0.01


def _fake_files(folder):
    folder.mkdir(parents=True)
    for name in data.MNIST_FILES:
        (folder / name).write_bytes(b"")


def test_lookup_order(tmp_path, monkeypatch):
    a, b, cache = tmp_path / "a", tmp_path / "b", tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    assert find_mnist(a) is None
    _fake_files(cache / "neuralode" / "mnist")
    assert find_mnist(a) == cache / "neuralode" / "mnist"
    _fake_files(b / "mnist")
    monkeypatch.setenv("NEURALODE_DATA_DIR", str(b))
    assert find_mnist(a) == b / "mnist"
    _fake_files(a / "mnist")
    assert find_mnist(a) == a / "mnist"


def _copy_real(data_dir, dest):
    dest.mkdir(parents=True, exist_ok=True)
    for name in data.MNIST_FILES:
        shutil.copy(data_dir / "mnist" / name, dest / name)


def test_truncated_file_is_named(data_dir, tmp_path):
    _copy_real(data_dir, tmp_path / "mnist")
    path = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz.*corrupt or truncated"):
        load_mnist(tmp_path, download=False)


def test_wrong_content_fails_the_checksum(data_dir, tmp_path):
    _copy_real(data_dir, tmp_path / "mnist")
    path = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # one wrong label
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz.*checksum"):
        load_mnist(tmp_path, download=False)


def test_missing_files_offline_says_where_to_put_them(tmp_path):
    with pytest.raises(DataError, match="not found.*--data-dir.*NEURALODE_DATA_DIR"):
        load_mnist(tmp_path, download=False)


def test_download_verifies_and_never_leaves_a_bad_file(data_dir, tmp_path, monkeypatch):
    """A local 'mirror' (file:// URLs, no network): the first serves a corrupt file, the second
    the real one. The download lands verified in the cache."""
    bad, good = tmp_path / "bad", tmp_path / "good"
    _copy_real(data_dir, good)
    bad.mkdir()
    for name in data.MNIST_FILES:
        (bad / name).write_bytes(gzip.compress(b"not mnist"))
    monkeypatch.setattr(data, "MNIST_MIRRORS", (bad.as_uri() + "/", good.as_uri() + "/"))
    monkeypatch.setattr(data.time, "sleep", lambda s: None)
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    train, test = load_mnist(None, download=True)
    assert len(train) == 60000 and len(test) == 10000
    files = sorted(os.listdir(cache / "neuralode" / "mnist"))
    assert files == sorted(data.MNIST_FILES)  # no partial or temporary files left behind


def test_failed_download_leaves_nothing(tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in data.MNIST_FILES:
        (bad / name).write_bytes(b"\x1f\x8b truncated")
    monkeypatch.setattr(data, "MNIST_MIRRORS", (bad.as_uri() + "/",))
    monkeypatch.setattr(data.time, "sleep", lambda s: None)
    with pytest.raises(DataError, match="could not download.*Offline"):
        load_mnist(tmp_path, download=True, retries=2)
    assert not (tmp_path / "mnist").exists()  # the folder it created is removed again


def test_the_tutorials_spiral_is_one_noisy_arm():
    """Exercise 1: x = t cos t, y = t sin t, t in [0, 4π], 1,000 points, noise 0.1."""
    d = data.make_spiral_trajectory(seed=1)
    assert d.t.shape == (1000,) and d.y.shape == (1000, 2)
    assert float(d.t[0]) == 0.0 and abs(float(d.t[-1]) - 4 * math.pi) < 1e-5
    t = d.t.double()
    want = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
    torch.testing.assert_close(d.y.double(), want, rtol=0, atol=1e-5)
    noise = (d.observed - d.y).double()
    assert 0.09 < float(noise.std()) < 0.11 and abs(float(noise.mean())) < 0.01
    assert d.split == 800


def test_the_cubic_trajectory_follows_its_dynamics():
    d = data.make_cubic_trajectory(n_points=1000, noise=0.05, seed=1)
    assert d.t.shape == (1000,) and d.y.shape == (1000, 2)
    torch.testing.assert_close(d.y[0], torch.tensor([2.0, 0.0]))
    assert float(d.t[-1]) == 25.0
    # central differences of the trajectory against dy/dt = y³A
    dt = float(d.t[1] - d.t[0])
    fd = (d.y[2:] - d.y[:-2]).double() / (2 * dt)
    f = data.cubic_dynamics(None, d.y[1:-1].double())
    assert float((fd - f).abs().max() / f.abs().max()) < 0.02
    noise = d.observed - d.y
    assert 0.04 < float(noise.std()) < 0.06
    assert d.split == 800


def test_spiral_points_two_noisy_arms():
    pts = data.make_spiral_points(n=200, noise=0.0)
    assert pts.x.shape == (400, 2) and pts.y.tolist().count(1) == 200
    torch.testing.assert_close(pts.x[:200], -pts.x[200:], atol=1e-6, rtol=0)  # arms opposite
