"""Plug-ins looked up by name (model families, objectives): a name is found by importing the
module of that name from the plug-in package, so adding one never edits a central list."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, TypeVar

from fmjax.config import ConfigError, did_you_mean

T = TypeVar("T")


def import_if_present(module: str) -> None:
    """Imports `module` so that it registers itself; a missing module of that name is not an
    error, a module that exists but fails (a missing dependency, say) is."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise


class Registry(Generic[T]):
    def __init__(self, package: str, field: str, what: str):
        self.package = package  # e.g. "fmjax.models": NAME lives in fmjax/models/NAME.py
        self.field = field  # the config key that names an entry, for error messages
        self.what = what  # "model family", "objective"
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        self._entries[name] = entry
        return entry

    def _import(self, module_name: str):
        import_if_present(f"{self.package}.{module_name}")

    def get(self, name: str) -> T:
        if name not in self._entries:
            self._import(name)
        if name not in self._entries:
            package_dir = importlib.import_module(self.package).__path__
            for module in pkgutil.iter_modules(package_dir):  # so the error lists them all
                self._import(module.name)
            known = sorted(self._entries)
            raise ConfigError(
                f"config.{self.field} = {name!r}: no such {self.what}; add "
                f"{self.package.replace('.', '/')}/{name}.py or use one of {known}."
                f"{did_you_mean(name, known)}")
        return self._entries[name]
