"""A Griffe extension for the documentation site: the docstrings' Sphinx roles (``:func:`odeint```,
``:class:`~._evaluator.Evaluator```, ...) become cross-references to the API reference where
their target has an entry there, and inline code where it has none, instead of showing the role
as text.

A role's target is resolved as Python would read it from the docstring's module: a full path,
a name of the ``neuralode`` package, a name of the docstring's public package (``neuralode.solvers``
for ``neuralode.solvers._methods``), or the one documented name it ends with; ``~`` shows only
the last component, a leading ``.`` is relative. Only targets the reference documents are
linked, so the strict build never meets a link without a target.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj):`(~?)\.*([\w.]+)`")


def _documented() -> set[str]:
    """Every path the API reference has an anchor for: the public modules' ``__all__``."""
    import neuralode

    paths = {f"neuralode.{n}" for n in neuralode.__all__}
    for info in pkgutil.walk_packages(neuralode.__path__, "neuralode."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        module = importlib.import_module(info.name)
        if hasattr(module, "__all__"):  # (a module itself has no anchor: its page is the link)
            paths.update(f"{info.name}.{n}" for n in module.__all__)
    return paths


class SphinxRoles(griffe.Extension):
    """Rewrite the Sphinx roles of every docstring of the package once it is loaded."""

    def __init__(self) -> None:
        self.documented = _documented()
        self.by_name: dict[str, list[str]] = {}
        for path in self.documented:
            self.by_name.setdefault(path.rsplit(".", 1)[-1], []).append(path)

    def _resolve(self, target: str, public: str) -> str | None:
        for path in (target, f"neuralode.{target}", f"{public}.{target}"):
            if path in self.documented:
                return path
        candidates = self.by_name.get(target, [])
        return candidates[0] if len(candidates) == 1 else None

    def _link(self, match: re.Match[str], public: str) -> str:
        short, target = match.group(1), match.group(2)
        shown = target.rsplit(".", 1)[-1] if short else target
        path = self._resolve(target, public)
        if path is None and "." in target:  # a member (Class.method): link to its owner
            head, last = target.rsplit(".", 1)
            path = self._resolve(head, public) or self._resolve(last, public)
        return f"[`{shown}`][{path}]" if path else f"`{shown}`"

    def _rewrite(self, obj: Any, public: str) -> None:
        if obj.docstring is not None and ":" in obj.docstring.value:
            obj.docstring.value = ROLE.sub(lambda m: self._link(m, public), obj.docstring.value)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Griffe's hook once a whole package is loaded (``on_package_loaded`` before 1.x)."""
        stack: list[Any] = [pkg]
        seen: set[int] = set()
        while stack:
            obj = stack.pop()
            if obj.is_alias:  # (a re-export, or a module imported into its package)
                try:
                    obj = obj.final_target
                except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                    continue
                if not obj.path.startswith("neuralode"):
                    continue
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            module_path = obj.path if obj.is_module else obj.module.path
            public = ".".join(p for p in module_path.split(".") if not p.startswith("_"))
            self._rewrite(obj, public)
            stack.extend(obj.members.values())

    on_package_loaded = on_package  # (the hook's name in Griffe before 1.x)
