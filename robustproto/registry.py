"""Plugins: discovery through entry points, registration in-process, the contract checks, and the factories.

Three entry-point groups are read, all with ``importlib.metadata.entry_points(group=...)``:

- ``robustproto.heads``: each entry point names a :class:`robustproto.Head` subclass;
- ``robustproto.regularizers``: each names a :class:`robustproto.Regularizer` subclass;
- ``robustproto.backbones``: each names a *module* whose timm ``register_model`` decorators run when it is
  imported. The entry point carries the name of the model it registers (a module that registers several
  models is named by several entry points, and imported once), so :func:`create_backbone` imports only the
  module of the model asked for.

:func:`register_head` and :func:`register_regularizer` add a class from inside the running process (a script,
a notebook, a test), beside the entry points; a subprocess (``torchrun``) does not see such a registration.
A backbone needs no robustproto registration in-process: importing the module that calls timm's
``register_model`` is the registration.

Plugins are loaded lazily (a plugin is imported the first time it is asked for or listed) and cached. Each
class is checked against its group's contract when it loads, as pluggy checks hook implementations against
their specs (:func:`check_head`, :func:`check_regularizer`): not a subclass of the base class, a required
method not implemented, a capability flag that is not a bool, or a capability declared
(``supports_margin = True``) whose hook is still the base class's. A plugin that fails to import or to pass
the checks, or whose name is registered twice, is recorded with its error: it is listed with that error and
asking for it by name raises :class:`PluginError` with it, while every other plugin keeps working. An
in-process registration is checked at once and raises the same error.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata as metadata
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import timm
from torch import nn

from .errors import PluginError, UsageError
from .head import CAPABILITY_FLAGS, HOOK_CAPABILITIES, Head
from .regularizer import Regularizer

__all__ = [
    "PluginError",
    "PluginInfo",
    "PluginRegistry",
    "backbone_registry",
    "check_head",
    "check_regularizer",
    "create_backbone",
    "create_head",
    "create_regularizer",
    "head_registry",
    "list_plugins",
    "load_backbones",
    "refresh_plugins",
    "register_head",
    "register_regularizer",
    "regularizer_registry",
]


@dataclass
class PluginInfo:
    name: str
    source: str  # who registered it: the distribution ("name version") or "module (registered in-process)"
    target: str  # what it names: "module:attr" or "module"
    error: str | None = None
    obj: Any = None  # the entry point until loaded, then the loaded object
    loaded: bool = False


def _dist_label(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown distribution"
    return f"{dist.metadata['Name']} {dist.version}"


def _overrides(cls: type, base: type, name: str) -> bool:
    """True when ``cls`` gets ``name`` from a class other than ``base`` (it or a parent implements it)."""
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass is not base
    return False


def check_head(cls: Any) -> list[str]:
    """What keeps ``cls`` from being a head plugin, as phrases completing "head 'name' ...": empty when nothing.

    Checked: a subclass of :class:`Head`; ``forward`` and ``loss`` implemented; every capability flag
    (:data:`robustproto.head.CAPABILITY_FLAGS`) a bool on the class; every hook whose flag is ``True``
    (:data:`robustproto.head.HOOK_CAPABILITIES`, e.g. ``supports_margin`` → ``margin``) implemented, not
    :class:`Head`'s. A head that overrides a hook without saying anything gets the flag from
    ``Head.__init_subclass__``, so heads written before the flags existed pass.
    """
    if not (isinstance(cls, type) and issubclass(cls, Head)):
        return ["is not a subclass of robustproto.Head"]
    problems = [f"does not implement {method}()" for method in ("forward", "loss") if not _overrides(cls, Head, method)]
    for flag in CAPABILITY_FLAGS:
        value = getattr(cls, flag)
        if not isinstance(value, bool):
            problems.append(f"sets {flag} = {value!r}, but a capability flag is True or False")
    for hook, flag in HOOK_CAPABILITIES.items():
        if getattr(cls, flag) is True and not _overrides(cls, Head, hook):
            problems.append(f"declares {flag} = True but does not implement {hook}(); implement it or drop the flag")
    return problems


def check_regularizer(cls: Any) -> list[str]:
    """What keeps ``cls`` from being a regularizer plugin (see :func:`check_head`): a subclass of
    :class:`Regularizer` that implements ``penalty`` and whose ``needs_input_grad`` is a bool."""
    if not (isinstance(cls, type) and issubclass(cls, Regularizer)):
        return ["is not a subclass of robustproto.Regularizer"]
    problems = []
    if not _overrides(cls, Regularizer, "penalty"):
        problems.append("does not implement penalty(ctx)")
    if not isinstance(cls.needs_input_grad, bool):
        problems.append(f"sets needs_input_grad = {cls.needs_input_grad!r}, but it is True or False")
    return problems


class PluginRegistry:
    """The plugins of one entry-point group, and those registered for it in this process.

    Args:
        group: the entry-point group, e.g. ``"robustproto.heads"``.
        kind: a word for messages ("head", "regularizer", "backbone").
        check: the contract check of a loaded plugin (:func:`check_head`), or ``None`` for module plugins
            (backbones), whose import is the whole effect.
    """

    def __init__(self, group: str, kind: str, check: Callable[[Any], list[str]] | None = None):
        self.group = group
        self.kind = kind
        self.check = check
        self._plugins: dict[str, PluginInfo] | None = None
        self._registered: dict[str, PluginInfo] = {}  # in-process; kept across refresh()
        self._modules: dict[str, tuple[Any, str | None]] = {}  # module name -> (module, import error)

    def refresh(self) -> None:
        """Forget what was discovered and imported; the next lookup scans the entry points again."""
        self._plugins = None
        self._modules.clear()

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
                self._registered_twice(plugins[ep.name], source, ep.value)
                continue
            plugins[ep.name] = PluginInfo(name=ep.name, source=source, target=ep.value, obj=ep)
        for name, info in self._registered.items():
            if name in plugins:  # a distribution installed after the registration, then refresh()
                self._registered_twice(plugins[name], info.source, info.target)
            else:
                plugins[name] = info
        self._plugins = plugins
        return plugins

    def _registered_twice(self, first: PluginInfo, source: str, target: str) -> None:
        first.error = (
            f"{self.kind} '{first.name}' is registered twice: by {first.source} ({first.target}) "
            f"and by {source} ({target}); uninstall or unregister one of them"
        )
        first.source = f"{first.source}, {source}"
        first.loaded = True
        first.obj = None

    def _refused(self, name: str, source: str, target: str, problems: list[str]) -> str:
        return f"{self.kind} '{name}' from {source} ({target}) {'; '.join(problems)}"

    def _import(self, module: str) -> tuple[Any, str | None]:
        """``module`` imported once per refresh (several entry points may name it); a failure is kept as text."""
        if module not in self._modules:
            try:
                self._modules[module] = (importlib.import_module(module), None)
            except Exception as exc:  # a broken plugin must not break the others
                last = traceback.extract_tb(exc.__traceback__)[-1]
                self._modules[module] = (None, f"{type(exc).__name__}: {exc} [{last.filename}:{last.lineno}]")
        return self._modules[module]

    def _load(self, info: PluginInfo) -> None:
        if info.loaded:
            return
        info.loaded = True
        ep: metadata.EntryPoint = info.obj
        info.obj = None
        obj, error = self._import(ep.module)
        if error is None and ep.attr:
            try:
                obj = functools.reduce(getattr, ep.attr.split("."), obj)
            except AttributeError as exc:
                error = f"AttributeError: {exc}"
        if error is not None:
            info.error = f"{self.kind} '{info.name}' from {info.source} failed to import ({info.target}): {error}"
            return
        problems = self.check(obj) if self.check else []
        if problems:
            info.error = self._refused(info.name, info.source, info.target, problems)
            return
        info.obj = obj

    def register(self, name: str, obj: Any) -> Any:
        """Add ``obj`` as ``name`` in this process, checked at once; returns ``obj``.

        Raises :class:`PluginError` when ``obj`` fails the check or ``name`` is taken (by an entry point or an
        earlier registration), naming both sources.
        """
        if not isinstance(name, str) or not name.strip():
            raise UsageError(f"a {self.kind} is registered under a non-empty name, got {name!r}")
        module = getattr(obj, "__module__", None) or "?"
        target = f"{module}:{getattr(obj, '__qualname__', type(obj).__name__)}"
        source = f"{module} (registered in-process)"
        plugins = self._discover()
        if name in plugins:
            first = plugins[name]
            raise PluginError(
                f"{self.kind} '{name}' is registered twice: by {first.source} ({first.target}) and by {source} "
                f"({target}); register it under another name"
            )
        problems = self.check(obj) if self.check else []
        if problems:
            raise PluginError(self._refused(name, source, target, problems))
        info = PluginInfo(name=name, source=source, target=target, obj=obj, loaded=True)
        self._registered[name] = plugins[name] = info
        return obj

    def unregister(self, name: str) -> None:
        """Remove an in-process registration (entry points are uninstalled, not unregistered)."""
        if name not in self._registered:
            raise PluginError(f"{self.kind} '{name}' was not registered in this process")
        del self._registered[name]
        self._plugins = None  # a name it shadowed as "registered twice" works again; imports stay cached

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
        """``{name: {"source": who registered it, "error": None | message}}`` for every plugin."""
        return {
            name: {"source": info.source, "error": info.error}
            for name, info in sorted(self.load_all().items())
        }


head_registry = PluginRegistry("robustproto.heads", "head", check_head)
regularizer_registry = PluginRegistry("robustproto.regularizers", "regularizer", check_regularizer)
backbone_registry = PluginRegistry("robustproto.backbones", "backbone")


def register_head(name: str, cls: type[Head]) -> type[Head]:
    """Make head class ``cls`` available as ``name`` in this process (``wrap(..., head=name)``, ``--head`` of an
    in-process ``train``), beside the entry points. It is checked as an installed head is (:func:`check_head`);
    a name already taken raises :class:`PluginError` naming both. Returns ``cls``."""
    return head_registry.register(name, cls)


def register_regularizer(name: str, cls: type[Regularizer]) -> type[Regularizer]:
    """Make regularizer class ``cls`` available as ``name`` in this process; see :func:`register_head`."""
    return regularizer_registry.register(name, cls)


def load_backbones() -> None:
    """Import every backbone module so its timm models are registered (failures stay listed)."""
    backbone_registry.load_all()


def _register_backbone(name: str) -> None:
    """Make timm know the model ``name``: import the plugin module named after it, else every backbone module
    (a plugin whose entry point names its module rather than its models); :class:`PluginError` if none has it."""
    if name in backbone_registry.names():
        backbone_registry.get(name)  # its import error, if any, is the answer
    if timm.is_model(name):
        return
    load_backbones()
    if timm.is_model(name):
        return
    broken = [info["error"] for info in backbone_registry.describe().values() if info["error"]]
    hint = f"; backbone plugins that failed to load: {' | '.join(broken)}" if broken else ""
    raise PluginError(
        f"unknown backbone '{name}': not a timm model (see `timm.list_models()`), "
        f"nor one registered by a robustproto.backbones plugin{hint}"
    )


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, num_classes=0, **kwargs)``, after importing the backbone plugin that registers
    ``name`` when one does."""
    _register_backbone(name)
    try:
        return timm.create_model(name, num_classes=0, **kwargs)
    except TypeError as exc:
        raise UsageError(f"backbone '{name}' rejected its options {sorted(kwargs)}: {exc}") from exc


def create_head(name: str, embed_dim: int, num_classes: int, **options: Any) -> Head:
    """Instantiate the head plugin ``name``."""
    cls = head_registry.get(name)
    try:
        return cls(embed_dim, num_classes, **options)
    except TypeError as exc:
        raise UsageError(f"head '{name}' rejected its options {sorted(options)}: {exc}") from exc


def create_regularizer(name: str, **options: Any) -> Regularizer:
    """Instantiate the regularizer plugin ``name``."""
    cls = regularizer_registry.get(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise UsageError(f"regularizer '{name}' rejected its options {sorted(options)}: {exc}") from exc


def list_plugins() -> dict[str, dict[str, dict[str, str | None]]]:
    """All plugins with their source and error, by group."""
    return {
        "heads": head_registry.describe(),
        "regularizers": regularizer_registry.describe(),
        "backbones": backbone_registry.describe(),
    }


def refresh_plugins() -> None:
    """Rescan entry points (after installing a plugin package into a running interpreter); in-process
    registrations stay."""
    importlib.invalidate_caches()
    for registry in (head_registry, regularizer_registry, backbone_registry):
        registry.refresh()
