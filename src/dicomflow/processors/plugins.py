"""Discovery of processors: pluggy over the ``dicomflow.processors`` entry-point group."""

import importlib.metadata
from collections.abc import Iterable

import pluggy

from dicomflow.processors import hookspecs
from dicomflow.processors.base import Processor
from dicomflow.processors.exceptions import PluginError

BUILTIN_DISTRIBUTION = "dicomflow"


def _allowed(entry_point: importlib.metadata.EntryPoint, allowlist: set[str] | None) -> bool:
    dist = entry_point.dist.name if entry_point.dist else ""
    if dist == BUILTIN_DISTRIBUTION:
        return True
    return allowlist is None or entry_point.name in allowlist


def plugin_manager(
    plugins: str = "", extra: Iterable[object] = (), load_entry_points: bool = True
) -> pluggy.PluginManager:
    """A plugin manager with the built-ins and the allowed third-party plugins.

    `plugins` is the DICOMFLOW_PLUGINS allowlist: empty loads every installed plugin, ``-``
    none but the built-ins, else a comma-separated list of entry-point names. Tests pass
    `load_entry_points=False` and register what they need through `extra`.
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    allowlist: set[str] | None
    if plugins.strip() == "-":
        allowlist = set()
    elif plugins.strip():
        allowlist = {name.strip() for name in plugins.split(",") if name.strip()}
    else:
        allowlist = None
    if load_entry_points:
        for entry_point in importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
            if not _allowed(entry_point, allowlist):
                continue
            try:
                module = entry_point.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {entry_point.name!r} ({entry_point.value}) failed to load: {exc}"
                ) from exc
            if manager.get_plugin(entry_point.name) is None:
                manager.register(module, name=entry_point.name)
    for plugin in extra:
        manager.register(plugin)
    return manager


def processor_classes(manager: pluggy.PluginManager) -> dict[str, type[Processor]]:
    """Every registered processor class by name; a name given twice is an error."""
    classes: dict[str, type[Processor]] = {}
    for registered in manager.hook.register_processors():
        for cls in registered:
            if not (isinstance(cls, type) and issubclass(cls, Processor)):
                raise PluginError(f"register_processors returned {cls!r}, not a Processor class")
            if cls.name in classes and classes[cls.name] is not cls:
                raise PluginError(f"two processors are named {cls.name!r}")
            classes[cls.name] = cls
    return dict(sorted(classes.items()))


def select(classes: dict[str, type[Processor]], allowlist: str) -> dict[str, type[Processor]]:
    """Apply the DICOMFLOW_PROCESSORS allowlist (empty = all)."""
    names = [name.strip() for name in allowlist.split(",") if name.strip()]
    if not names:
        return classes
    unknown = [name for name in names if name not in classes]
    if unknown:
        raise PluginError(
            f"unknown processor(s) {', '.join(unknown)}; installed: {', '.join(classes)}"
        )
    return {name: classes[name] for name in names}
