import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _a_share_of_the_cores() -> None:
    """Under pytest-xdist, every worker's torch and the processes its tests start use their
    share of the cores (one each with two workers on two cores): several workers' thread pools
    on the same cores would contend, and OpenMP's idle threads spin while they wait. A thread
    count set in the environment is kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        share = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(share)
        os.environ.setdefault("MKL_NUM_THREADS", str(share))
        torch.set_num_threads(share)


_a_share_of_the_cores()


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


# ------------------------------------------------------------------ the documentation site

_SITE_BUILD: dict = {}


def pytest_collection_finish(session):
    """Start building the documentation site (about two minutes of executed examples) as soon as
    a test that needs it is collected, in a process of its own, so that it runs beside the other
    tests on a second core; ``tests/test_docs.py``'s ``site`` fixture waits for it. Under
    pytest-xdist every worker collects every test: there the fixture starts the build in the
    worker that runs it, while the other workers go on with the other tests."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if any(
        item.path.name == "test_docs.py" and "site" in getattr(item, "fixturenames", ())
        for item in session.items
    ):
        start_site_build()


def pytest_collection_modifyitems(items):
    """Under pytest-xdist, the site's tests first: the worker that takes them starts the build at
    once and waits for it while the other workers run the other tests (last, it would wait
    alone at the end of the run)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.path.name != "test_docs.py")  # (a stable sort)


def start_site_build() -> dict:
    """The background build: ``{"proc", "out", "log", "tmp"}`` (started once per session)."""
    if not _SITE_BUILD:
        tmp = Path(tempfile.mkdtemp(prefix="neuralode-site-"))
        env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
        # its output to a file: a pipe nobody reads would fill and block it
        with open(tmp / "build.log", "w") as log:
            proc = subprocess.Popen(
                # (not -q: quiet mode hides the warnings that strict mode turns into a failure)
                [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp / "site")],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        _SITE_BUILD.update(proc=proc, out=tmp / "site", log=tmp / "build.log", tmp=tmp)
    return _SITE_BUILD


def pytest_sessionfinish(session, exitstatus):
    build = _SITE_BUILD
    if build:
        if build["proc"].poll() is None:  # an interrupted or deselected run: stop it
            build["proc"].kill()
            build["proc"].wait()
        shutil.rmtree(build["tmp"], ignore_errors=True)
