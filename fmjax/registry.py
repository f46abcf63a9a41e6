"""Plug-ins looked up by name (model families, objectives, tasks, HF converters): a name is
found by importing the module of that name from the plug-in package, so adding one never
edits a central list. Imports no fmjax module: every layer may use it."""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Generic, TypeVar

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
    def __init__(self, package: str, field: str, what: str, error: type[Exception] = LookupError):
        self.package = package  # e.g. "fmjax.models": NAME lives in fmjax/models/NAME.py
        self.field = field  # the config key that names an entry, for error messages
        self.what = what  # "model family", "objective"
        self.error = error  # raised for an unknown name (config.ConfigError for config keys)
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
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
            raise self.error(
                f"config.{self.field} = {name!r}: no such {self.what}; add "
                f"{self.package.replace('.', '/')}/{name}.py or use one of {known}."
                + (f" Did you mean '{close[0]}'?" if close else ""))
        return self._entries[name]
