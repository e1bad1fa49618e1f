import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def shared_data_dir() -> Path:
    """The real MNIST files: ``$NEURALODE_TEST_DATA`` or ``../shared/data`` beside the repo."""
    env = os.environ.get("NEURALODE_TEST_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not (path / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        message = f"MNIST files not found under {path}/mnist (set NEURALODE_TEST_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI has ../shared/data: a skip there would hide failures
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True)
def _no_download(monkeypatch, tmp_path_factory):
    """Tests never download: the cache points at an empty folder, mirrors at nothing."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("NEURALODE_DATA_DIR", raising=False)
    import neuralode.data as data

    monkeypatch.setattr(data, "MNIST_MIRRORS", ())
