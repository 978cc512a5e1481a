"""Name → builder tables, one per kind of component (model, loss, optimizer, metric, ...)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from dlpipe.errors import ConfigError

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    """Names → builders for one kind of component.

    A config names a component by its registry key (``mlp``) or by an import path
    (``my_pkg.models:tiny_mlp``), so users add components without touching dlpipe.

    Example:
        >>> MODELS = Registry("model")
        >>> @MODELS.register("mlp")
        ... def mlp(in_features, out_features, *, hidden=(64,)): ...
        >>> MODELS.get("mlp") is mlp
        True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding a builder under `name`; a name can be registered once."""

        def add(builder: T) -> T:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._builders[name] = builder
            return builder

        return add

    def get(self, name: str, path: str = "") -> T:
        """Return the builder for `name`; `path` is the config field, for the error message."""
        if ":" in name:
            return _import_object(name, kind=self.kind, path=path)
        try:
            return self._builders[name]
        except KeyError:
            raise ConfigError.unknown(self.kind, name, self._builders, path=path) from None

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: object) -> bool:
        return name in self._builders


def _import_object(spec: str, *, kind: str, path: str) -> Callable:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError([(path, f"cannot import module {module_name!r} for {kind} "
                                  f"{spec!r}: {exc}")]) from None
    obj = getattr(module, attr, None)
    if not callable(obj):
        raise ConfigError([(path, f"{module_name!r} has no callable {attr!r} "
                                  f"(from {kind} {spec!r})")])
    return obj
