"""Name-keyed registries, filled by the modules of a package.

Models (:mod:`adheat_app.models`), heatmap methods
(:mod:`adheat_app.attribution`), registration backends
(:mod:`adheat_app.preprocess.backends`) and reference kinds
(:mod:`adheat_app.evaluation.references`) are each a package whose submodules
register one entry with :meth:`Registry.register`. The registry imports every
submodule of its package on first use, so adding one is adding one file.
A registry may hold a contract (``check``): every entry is checked when it
registers, so an entry that breaks the contract fails at import with a message
naming it, before any run uses it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """A read-only mapping from names to registered objects.

    Parameters
    ----------
    package : str
        Dotted name of the package whose submodules register entries.
    kind : str
        What is registered (for error messages), e.g. ``"model"``.
    check : callable, optional
        ``check(name, obj)`` raises (``TypeError`` or ``ValueError``, saying
        what is wrong) when ``obj`` breaks the registry's contract.
    """

    def __init__(self, package: str, kind: str, check: Callable[[str, T], None] | None = None):
        self._package = package
        self._kind = kind
        self._check = check
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering an object under ``name``."""

        def decorate(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self._kind} {name!r} is registered twice")
            if self._check is not None:
                self._check(name, obj)
            self._entries[name] = obj
            return obj

        return decorate

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            package = importlib.import_module(self._package)
            for info in pkgutil.iter_modules(package.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{self._package}.{info.name}")

    def __getitem__(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self._kind} {name!r}; available: {', '.join(self)}") from None

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(self._entries)

    def __len__(self) -> int:
        self._load()
        return len(self._entries)
