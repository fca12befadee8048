"""The plugin registry: issuers, stores and consumers found through entry points.

A plugin is a distribution that declares, in its ``pyproject.toml``::

    [project.entry-points."rotator.issuers"]
    myvendor = "my_rotator_plugin.models:MyVendorSpec"

The entry point's name is the ``type`` a rotation file writes; its object is the plugin's
pydantic config model (a subclass of :class:`rotator.spec.IssuerModel`,
:class:`rotator.spec.TargetModel` or :class:`rotator.spec.ConsumerModel`), which carries the
factory (``make_issuer``, ``open_store`` or ``open_write_only``, ``make_consumer``) and the
abilities the engine asks about. The built-in vendors, stores and consumers
register the same way, in rotator's own ``pyproject.toml``.

Names are read from the installed metadata once (cached); a plugin's module is imported only
when a rotation file names its ``type`` (or ``rotator schema`` lists every model), so
``rotator --help`` and ``rotator emergency`` pay for none of them.
"""

from __future__ import annotations

import functools
import typing
from importlib.metadata import EntryPoint, entry_points

from pydantic import BaseModel

from rotator.errors import ConfigError

ISSUERS = "rotator.issuers"
STORES = "rotator.stores"
CONSUMERS = "rotator.consumers"
GROUPS = (ISSUERS, STORES, CONSUMERS)
BUILTIN_DIST = "rotator"
"""The distribution of the built-in plugins."""


@functools.cache
def _installed() -> dict[str, list[EntryPoint]]:
    """rotator's groups of every installed distribution, read once (one scan of the metadata)."""
    every = entry_points()
    return {group: list(every.select(group=group)) for group in GROUPS}


@functools.cache
def _entry_points(group: str) -> dict[str, EntryPoint]:
    """``type`` -> entry point: the built-ins first (in their declared order), then the other
    distributions' by name. A name registered twice keeps its first (a built-in wins)."""
    found = list(_installed()[group])
    found.sort(key=lambda ep: (_dist_name(ep) != BUILTIN_DIST, _dist_name(ep) != BUILTIN_DIST and ep.name))
    out: dict[str, EntryPoint] = {}
    for ep in found:
        out.setdefault(ep.name, ep)
    return out


def _dist_name(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else ""


def names(group: str) -> tuple[str, ...]:
    """The ``type`` names registered in ``group``, without importing any plugin."""
    return tuple(_entry_points(group))


def distribution(group: str, name: str) -> str:
    """The distribution that registers ``name`` in ``group`` (``rotator`` for a built-in)."""
    return _dist_name(_entry_points(group)[name])


@functools.cache
def model(group: str, name: str) -> type[BaseModel]:
    """The config model of plugin ``name`` in ``group``, imported now (once).

    A plugin that fails to import, or whose object is not a model of the group's base class
    with ``type: Literal[name]``, is a ConfigError naming it and its entry point.
    """
    from rotator.spec.models import ConsumerModel, IssuerModel, TargetModel

    ep = _entry_points(group).get(name)
    if ep is None:
        known = ", ".join(names(group)) or "none"
        raise ConfigError(f"no {group} plugin named {name!r} is installed (installed: {known})")
    try:
        loaded = ep.load()
    except Exception as exc:  # noqa: BLE001 - any import failure of a third-party plugin
        raise ConfigError(
            f"{group} plugin {name!r} ({ep.value}) failed to load: {type(exc).__name__}"
        ) from None
    base: type[BaseModel] = {ISSUERS: IssuerModel, STORES: TargetModel, CONSUMERS: ConsumerModel}[group]
    if not (isinstance(loaded, type) and issubclass(loaded, base)):
        raise ConfigError(f"{group} plugin {name!r} ({ep.value}) is not a {base.__name__} subclass")
    field = loaded.model_fields.get("type")
    if field is None or typing.get_args(field.annotation) != (name,):
        raise ConfigError(f"{group} plugin {name!r} ({ep.value}): its model needs `type: Literal[{name!r}]`")
    return loaded


def models(group: str, only: typing.Collection[str] | None = None) -> list[type[BaseModel]]:
    """The models of ``group`` in registry order; ``only`` limits them to those names."""
    return [model(group, n) for n in names(group) if only is None or n in only]


def clear_cache() -> None:
    """Forget what was read (a test that installs or removes a distribution calls this)."""
    _installed.cache_clear()
    _entry_points.cache_clear()
    model.cache_clear()
