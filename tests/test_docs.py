"""The documentation site: it builds in strict mode (a broken reference, a failing code block
or a warning fails the build), every code block ran in that build, every public name has its
API reference entry, and no internal link is broken."""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _public_modules() -> list[str]:
    import neuralode

    names = ["neuralode"]
    for info in pkgutil.walk_packages(neuralode.__path__, "neuralode."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        if hasattr(importlib.import_module(info.name), "__all__"):
            names.append(info.name)
    return names


def test_every_public_module_has_a_reference_page():
    pages = "\n".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.md"))
    documented = set(re.findall(r"^::: (\S+)$", pages, flags=re.M))
    missing = sorted(set(_public_modules()) - documented)
    assert not missing, f"public modules without a ::: entry under docs/api: {missing}"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    try:
        import markdown_exec  # noqa: F401
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError:
        message = "the docs extra is not installed (pip install -e '.[docs]')"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it: a skip there would hide a broken site
        pytest.skip(message)
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        # (not -q: quiet mode hides the warnings that strict mode turns into a failure)
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    return out


def test_the_site_builds_and_its_code_ran(site):
    index = (site / "index.html").read_text()
    assert "evaluations:" in index  # the output of the home page's executed block
    solving = (site / "learn" / "solving" / "index.html").read_text()
    nfe = {
        m: int(n) for m, n in re.findall(r"(dopri5|kvaerno5): h\(1\) = [0-9.]+, (\d+) ev", solving)
    }
    assert set(nfe) == {"dopri5", "kvaerno5"} and nfe["kvaerno5"] * 20 < nfe["dopri5"], nfe


def test_every_public_name_has_its_reference_entry(site):
    html = "\n".join(p.read_text() for p in (site / "api").rglob("*.html"))
    anchors = set(re.findall(r'id="(neuralode[\w.]*)"', html))
    missing = []
    for module_name in _public_modules():
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            if name.startswith("__"):  # (__version__: not an API object)
                continue
            if f"{module_name}.{name}" not in anchors:
                missing.append(f"{module_name}.{name}")
    assert not missing, missing


def test_no_internal_link_is_broken(site):
    broken = []
    for page in site.rglob("*.html"):
        for href in re.findall(r'href="([^"]+)"', page.read_text()):
            url = urlparse(href)
            if url.scheme or url.netloc or not url.path:
                continue  # external, or an anchor on the same page
            path = unquote(url.path)
            base = site if path.startswith("/") else page.parent  # (404.html: from the root)
            target = (base / path.lstrip("/")).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(site)} -> {href}")
    assert not broken, broken[:20]
