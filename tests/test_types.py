"""Type hints: mypy is clean over the package (strict on the public modules; the private
ones checked without requiring every annotation: see ``[tool.mypy]`` in pyproject.toml), and
every public function and method is fully annotated, whichever module defines it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _public_modules() -> list[str]:
    import neuralode

    names = ["neuralode"]
    for info in pkgutil.walk_packages(neuralode.__path__, "neuralode."):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            names.append(info.name)
    return names


def test_mypy_is_clean():
    pytest.importorskip("mypy", reason="the test extra installs mypy")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert "Success: no issues found" in proc.stdout


def _unannotated(qualname: str, fn) -> str | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin: nothing to read
        return None
    bare = [
        name
        for name, p in sig.parameters.items()
        if name not in ("self", "cls") and p.annotation is inspect.Parameter.empty
    ]
    no_return = sig.return_annotation is inspect.Signature.empty
    if bare or no_return:
        return f"{qualname}: parameters {bare}" + (", return" if no_return else "")
    return None


def test_every_public_function_and_method_is_annotated():
    missing: list[str] = []
    seen: set[int] = set()
    for module_name in _public_modules():
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if inspect.isfunction(obj):
                missing.append(_unannotated(f"{module_name}.{name}", obj))
            elif inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_") and attr != "__init__":
                        continue
                    if isinstance(member, (staticmethod, classmethod)):
                        member = member.__func__
                    elif isinstance(member, property):
                        member = member.fget
                    if inspect.isfunction(member):
                        missing.append(_unannotated(f"{module_name}.{name}.{attr}", member))
    missing = [m for m in missing if m]
    assert not missing, "\n".join(missing)
