"""Name -> class registries with plugin discovery through Python entry points.

Built-in methods register themselves when ``sslbench.ssl`` is imported; third-party methods
register through the entry-point group ``sslbench.methods`` (``name = "pkg.module:Class"`` or a
module whose import registers) or through a recipe's ``plugins: [path/to/file.py]``.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import hashlib
import sys
from pathlib import Path
from typing import Callable, Generic, Iterable, TypeVar

from .errors import UserError, did_you_mean

T = TypeVar("T")

# Closed name lists that config values must come from ("source", "optimizer", "protocol", ...),
# published by the module that owns each list, so that ``config`` can check a recipe against
# them without importing a higher layer. ``sslbench.recipe`` imports every owner before checking.
_PUBLISHED: dict[str, Callable[[], Iterable[str]]] = {}


def publish(kind: str, names: Callable[[], Iterable[str]]) -> None:
    """Make ``names()`` the valid values of ``kind`` (read each time a value is checked)."""
    _PUBLISHED[kind] = names


def published(kind: str) -> tuple[str, ...]:
    """The names published for ``kind``; an internal error when its owner was never imported."""
    if kind not in _PUBLISHED:
        raise RuntimeError(f"no {kind} names published: load recipes through sslbench.recipe, "
                           f"which imports the module that owns them")
    return tuple(_PUBLISHED[kind]())


class Registry(Generic[T]):
    """A name -> object registry, filled by decorators and by entry points (loaded lazily)."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._origin: dict[str, str] = {}
        self._entry_points_loaded = False
        publish(kind, self.names)

    def register(self, name: str, origin: str = "built-in") -> Callable[[T], T]:
        def deco(obj: T) -> T:
            from .identity import check_name

            # names become run-directory and record-file name parts
            check_name(name, f"{self.kind} name", f"register it under a plain name ({origin})")
            if name in self._items and self._items[name] is not obj:
                # Re-registering the same qualified class (e.g. a plugin file loaded twice) is fine.
                old = self._items[name]
                if getattr(old, "__qualname__", None) != getattr(obj, "__qualname__", None) or \
                        getattr(old, "__module__", None) != getattr(obj, "__module__", None):
                    raise UserError(f"{self.kind} '{name}' is registered twice "
                                    f"({self._origin[name]} and {origin}); rename one of them")
            self._items[name] = obj
            self._origin.setdefault(name, origin)
            try:
                setattr(obj, "name", name)
            except (AttributeError, TypeError):
                pass
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests register throwaway methods)."""
        self._items.pop(name, None)
        self._origin.pop(name, None)

    def load_entry_points(self) -> None:
        if self._entry_points_loaded or self.entry_point_group is None:
            return
        self._entry_points_loaded = True
        for ep in importlib.metadata.entry_points(group=self.entry_point_group):
            try:
                obj = ep.load()
            except Exception as e:  # a broken plugin must not break the whole CLI
                print(f"warning: plugin '{ep.name}' ({ep.value}) failed to load: {e}",
                      file=sys.stderr)
                continue
            if ep.name not in self._items and isinstance(obj, type):
                try:
                    self.register(ep.name, origin=f"plugin {ep.value}")(obj)
                except UserError as e:
                    print(f"warning: plugin '{ep.name}' ({ep.value}) skipped: {e}",
                          file=sys.stderr)
            elif ep.name in self._items:
                self._origin[ep.name] = f"plugin {ep.value}"

    def get(self, name: str) -> T:
        self.load_entry_points()
        if name not in self._items:
            raise UserError(f"unknown {self.kind} '{name}'{did_you_mean(name, self._items)}; "
                            f"is the plugin installed or listed under 'plugins:' in the recipe?")
        return self._items[name]

    def names(self) -> list[str]:
        self.load_entry_points()
        return sorted(self._items)

    def origin(self, name: str) -> str:
        return self._origin.get(name, "?")

    def __contains__(self, name: str) -> bool:
        self.load_entry_points()
        return name in self._items


def load_plugin_file(path: str | Path) -> None:
    """Import a plugin ``.py`` file so that its ``@register_method`` decorators run."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"plugin file not found: {p}; fix the path under 'plugins:' in the recipe")
    digest = hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:10]
    mod_name = f"sslbench_plugin_{p.stem}_{digest}"
    if mod_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(mod_name, p)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except UserError:
        raise
    except Exception as e:
        del sys.modules[mod_name]
        raise UserError(f"plugin file {p} failed to import: {type(e).__name__}: {e}") from e
