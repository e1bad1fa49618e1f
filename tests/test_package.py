"""The package surface: light import, the README's example runs as printed."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_is_light():
    heavy = ("matplotlib", "neuralode.cli", "neuralode.experiments")
    code = f"import sys, neuralode; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _readme_blocks(lang):
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_readme_python_examples_run_as_printed():
    blocks = _readme_blocks("python")
    assert blocks, "the README must show a first example"
    outputs = [
        subprocess.run(
            [sys.executable, "-c", block],
            check=True,
            cwd=ROOT,
            timeout=300,
            capture_output=True,
            text=True,
        ).stdout
        for block in blocks
    ]
    readme = (ROOT / "README.md").read_text()
    shown = re.search(r"prints \(on a 2-core CPU\)\n\n```text\n(.*?)\n```", readme, re.S)
    # the solver's lines are exact; the training and report lines follow from them
    assert outputs[0].splitlines()[:2] == shown.group(1).splitlines()[:2]
    assert outputs[0].splitlines()[3:6] == shown.group(1).splitlines()[3:6]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"## Test\n.*?```bash\n(.*?)\n```", readme, flags=re.S).group(1).strip()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci


def test_the_package_ships_its_type_hints():
    """PEP 561: ``py.typed`` beside the package and in its package data, so that a type
    checker in a user's project reads neuralode's annotations."""
    import tomllib

    import neuralode

    assert (Path(neuralode.__file__).parent / "py.typed").is_file()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["neuralode"]


def test_every_public_name_has_a_docstring():
    """Every class and function in a public module's ``__all__`` says what it is (the API
    reference is generated from these)."""
    import importlib
    import inspect
    import pkgutil

    import neuralode

    missing = []
    for info in pkgutil.walk_packages(neuralode.__path__, "neuralode."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            # (its own docstring: a class does not inherit one on the site)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and not (
                obj.__doc__ or ""
            ).strip():
                missing.append(f"{info.name}.{name}")
    assert not missing, missing
