"""The documentation site: it builds in strict mode (a broken reference, a failing code block
or a warning fails the build), every code block ran in that build, every public name has its
API reference entry, and no internal link is broken."""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from conftest import start_site_build

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
def site() -> Path:
    try:
        import markdown_exec  # noqa: F401
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError:
        message = "the docs extra is not installed (pip install -e '.[docs]')"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it: a skip there would hide a broken site
        pytest.skip(message)
    build = start_site_build()  # started at collection (conftest.py); here if it was not
    try:
        code = build["proc"].wait(timeout=600)
    except subprocess.TimeoutExpired:
        build["proc"].kill()
        pytest.fail("the site's build ran for more than 10 minutes")
    output = build["log"].read_text()
    assert code == 0, output
    assert "WARNING" not in output, output
    return build["out"]


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


def test_docstring_roles_are_cross_references_not_text(site):
    """The docstrings' Sphinx roles (``:class:`Dopri5```) reach the reference as links (or as
    inline code where the target has no entry), never as the role's text."""
    leftovers = []
    for page in (site / "api").rglob("*.html"):
        text = re.sub(r"<[^>]+>", "", page.read_text())
        leftovers += [
            f"{page.parent.name}: {m}"
            for m in re.findall(r":(?:func|class|meth|data|mod|attr|exc):", text)
        ]
    assert not leftovers, leftovers[:10]
    solvers = (site / "api" / "solvers" / "index.html").read_text()
    assert 'href="../neuralode/#neuralode.odeint"' in solvers  # :func:`odeint`, linked


def test_no_internal_link_is_broken(site):
    broken = []
    ids: dict[Path, set[str]] = {}
    for page in site.rglob("*.html"):
        for href in re.findall(r'href="([^"]+)"', page.read_text()):
            url = urlparse(href)
            if url.scheme or url.netloc:
                continue  # external
            path = unquote(url.path)
            if not path:
                target = page  # an anchor on the same page
            else:
                base = site if path.startswith("/") else page.parent  # (404.html: from the root)
                target = (base / path.lstrip("/")).resolve()
                if target.is_dir():
                    target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(site)} -> {href}")
            elif url.fragment and target.suffix == ".html":
                if target not in ids:
                    ids[target] = set(re.findall(r'id="([^"]+)"', target.read_text()))
                if unquote(url.fragment) not in ids[target]:
                    broken.append(f"{page.relative_to(site)} -> {href} (no such anchor)")
    assert not broken, broken[:20]


def test_every_example_and_tutorial_page_ran(site):
    """Each gallery page embeds the pictures its run drew; each tutorial and example page
    holds the output of its code (markdown-exec's result blocks)."""
    for page in sorted((site / "examples").glob("*/index.html")):
        html = page.read_text()
        assert "data:image/png;base64," in html, f"{page}: no picture from its run"
        assert "diagnose:" in html or "evaluations" in html, f"{page}: no output of its run"
    for source in sorted((ROOT / "docs" / "learn").glob("*.md")):
        shown = source.read_text().count('source="above" result="text"')
        html = (site / "learn" / source.stem / "index.html").read_text()
        # each such block renders as two highlighted blocks: its source, then its output
        assert shown and html.count('<div class="highlight">') >= 2 * shown, source.name


def _browser():
    """Chromium driven by Playwright, or the reason there is none (a CI failure, else a skip)."""
    import shutil

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    reason = None
    if executable is None:
        reason = "no chromium on PATH (apt-get install chromium)"
    elif sync_playwright is None:
        reason = "playwright is not installed (pip install -e '.[docs]')"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return sync_playwright, executable


@pytest.fixture(scope="module")
def served(site):
    """The built site over HTTP on a free local port, as ``mkdocs serve`` would give it."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_site_in_a_real_browser(served, tmp_path):
    """Home, a tutorial page, an API page and a gallery page render in headless Chromium with
    their pictures and no script errors, and the search box finds ``odeint``."""
    sync_playwright, executable = _browser()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            pages = {
                "": "neuralode",
                "learn/continuous-depth/": "From ResNets to continuous depth",
                "api/solvers/": "neuralode.solvers",
                "examples/density/": "A 2-D continuous normalizing flow",
            }
            for path, heading in pages.items():
                response = page.goto(f"{served}/{path}", wait_until="networkidle")
                assert response is not None and response.ok, path
                assert heading in page.inner_text("article"), path
                images = page.eval_on_selector_all(
                    "article img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])"
                )
                assert all(done and width > 0 for done, width in images), (path, images)
                page.screenshot(
                    path=str(tmp_path / f"{path.strip('/').replace('/', '_') or 'home'}.png")
                )
            gallery_images = page.eval_on_selector_all("article img", "imgs => imgs.length")
            assert gallery_images >= 2  # density.png and flow_snapshots.png, drawn by the run

            page.goto(f"{served}/", wait_until="networkidle")
            page.click("label.md-search__icon, .md-search__input", timeout=10_000)
            page.type("input.md-search__input", "odeint", delay=20)  # keystrokes, as a user
            page.wait_for_selector(".md-search-result__item", timeout=20_000)
            results = page.inner_text(".md-search-result")
            assert "odeint" in results, results[:500]
            assert not errors, errors
        finally:
            browser.close()
