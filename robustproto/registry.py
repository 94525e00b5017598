"""Plugin discovery through Python entry points.

Three groups are read, all with ``importlib.metadata.entry_points(group=...)``:

- ``robustproto.heads``: each entry point names a :class:`robustproto.Head` subclass;
- ``robustproto.regularizers``: each names a :class:`robustproto.Regularizer` subclass;
- ``robustproto.backbones``: each names a *module* whose timm ``register_model``
  decorators run when it is imported.

Plugins are loaded lazily (a plugin is imported the first time it is asked for or
listed) and cached. A plugin that fails to import, that does not subclass the
expected base class, or whose name is registered by two distributions is recorded
with its error: it is listed with that error and asking for it by name raises
:class:`PluginError` with it, while every other plugin keeps working.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import traceback
from dataclasses import dataclass
from typing import Any

from .errors import PluginError

__all__ = [
    "PluginError",
    "PluginInfo",
    "PluginRegistry",
    "head_registry",
    "regularizer_registry",
    "backbone_registry",
    "list_plugins",
    "load_backbones",
    "refresh_plugins",
]


@dataclass
class PluginInfo:
    name: str
    source: str  # the distribution that registered it, "name version"
    target: str  # the entry point's value, "module:attr" or "module"
    error: str | None = None
    obj: Any = None
    loaded: bool = False


def _dist_label(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown distribution"
    return f"{dist.metadata['Name']} {dist.version}"


class PluginRegistry:
    """The plugins of one entry-point group.

    Args:
        group: the entry-point group, e.g. ``"robustproto.heads"``.
        base: the class every plugin must subclass, or ``None`` for module plugins
            (backbones), whose import is the whole effect.
        kind: a word for messages ("head", "regularizer", "backbone module").
    """

    def __init__(self, group: str, base: type | None, kind: str):
        self.group = group
        self.base = base
        self.kind = kind
        self._plugins: dict[str, PluginInfo] | None = None

    def refresh(self) -> None:
        """Forget what was discovered; the next lookup scans the entry points again."""
        self._plugins = None

    def _discover(self) -> dict[str, PluginInfo]:
        if self._plugins is not None:
            return self._plugins
        plugins: dict[str, PluginInfo] = {}
        seen: set[tuple[str, str, str]] = set()
        for ep in metadata.entry_points(group=self.group):
            source = _dist_label(ep)
            key = (ep.name, ep.value, source)
            if key in seen:  # the same distribution seen twice on sys.path (e.g. editable + build dir)
                continue
            seen.add(key)
            if ep.name in plugins:
                first = plugins[ep.name]
                first.error = (
                    f"{self.kind} '{ep.name}' is registered twice: by {first.source} ({first.target}) "
                    f"and by {source} ({ep.value}); uninstall one of them"
                )
                first.source = f"{first.source}, {source}"
                first.loaded = True
                continue
            info = PluginInfo(name=ep.name, source=source, target=ep.value)
            info.obj = ep  # replaced by the loaded object on first use
            plugins[ep.name] = info
        self._plugins = plugins
        return plugins

    def _load(self, info: PluginInfo) -> None:
        if info.loaded:
            return
        info.loaded = True
        ep: metadata.EntryPoint = info.obj
        info.obj = None
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the others
            last = traceback.extract_tb(exc.__traceback__)[-1]
            info.error = (
                f"{self.kind} '{info.name}' from {info.source} failed to import ({info.target}): "
                f"{type(exc).__name__}: {exc} [{last.filename}:{last.lineno}]"
            )
            return
        if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
            info.error = (
                f"{self.kind} '{info.name}' from {info.source} ({info.target}) is not a subclass of "
                f"robustproto.{self.base.__name__}"
            )
            return
        info.obj = obj

    def names(self) -> list[str]:
        """Registered names, without loading anything."""
        return sorted(self._discover())

    def get(self, name: str) -> Any:
        """The loaded plugin called ``name``; :class:`PluginError` if unknown or broken."""
        plugins = self._discover()
        if name not in plugins:
            known = ", ".join(sorted(plugins)) or "none"
            raise PluginError(
                f"unknown {self.kind} '{name}' (installed: {known}); "
                f"install the package that provides it or check the spelling"
            )
        info = plugins[name]
        self._load(info)
        if info.error:
            raise PluginError(info.error)
        return info.obj

    def load_all(self) -> dict[str, PluginInfo]:
        """Load every plugin (isolating failures) and return their records."""
        plugins = self._discover()
        for info in plugins.values():
            self._load(info)
        return plugins

    def describe(self) -> dict[str, dict[str, str | None]]:
        """``{name: {"source": distribution, "error": None | message}}`` for every plugin."""
        return {
            name: {"source": info.source, "error": info.error}
            for name, info in sorted(self.load_all().items())
        }


def _head_base() -> type:
    from .head import Head

    return Head


def _regularizer_base() -> type:
    from .regularizer import Regularizer

    return Regularizer


head_registry = PluginRegistry("robustproto.heads", _head_base(), "head")
regularizer_registry = PluginRegistry("robustproto.regularizers", _regularizer_base(), "regularizer")
backbone_registry = PluginRegistry("robustproto.backbones", None, "backbone module")


def load_backbones() -> None:
    """Import every backbone module so its timm models are registered (failures stay listed)."""
    backbone_registry.load_all()


def list_plugins() -> dict[str, dict[str, dict[str, str | None]]]:
    """All plugins with their source distribution and error, by group."""
    return {
        "heads": head_registry.describe(),
        "regularizers": regularizer_registry.describe(),
        "backbones": backbone_registry.describe(),
    }


def refresh_plugins() -> None:
    """Rescan entry points (after installing a plugin package into a running interpreter)."""
    importlib.invalidate_caches()
    for registry in (head_registry, regularizer_registry, backbone_registry):
        registry.refresh()
