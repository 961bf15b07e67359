"""Plugin discovery: a pluggy manager built by a factory, never a global.

Plugins are found through the ``syncd`` entry-point group, exactly as a
third-party package ships them; the core never imports one by name. Set
``SYNCD_DISABLE_PLUGIN_AUTOLOAD=1`` to load only what the caller registers
(tests and embedding), in the spirit of pytest's own switch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

import attrs
import pluggy

from syncd import hookspecs
from syncd.errors import ConfigError
from syncd.plugin import PluginSpec

AUTOLOAD_ENV = "SYNCD_DISABLE_PLUGIN_AUTOLOAD"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@attrs.frozen
class Discovered:
    """A plugin found at start-up, with where it came from.

    Attributes:
        spec: What its hook declared.
        package: The distribution that provides it ("-" when registered directly).
        version: That distribution's version.
    """

    spec: PluginSpec
    package: str = "-"
    version: str = "-"


def get_plugin_manager(
    extra: Iterable[object] = (), *, autoload: bool | None = None
) -> pluggy.PluginManager:
    """Build a manager with the hookspecs, the entry-point plugins and ``extra``."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    # Historic: every package registered from now on gets to add its own hookspecs.
    pm.hook.syncd_addhooks.call_historic(kwargs={"pluginmanager": pm})
    if autoload is None:
        autoload = os.environ.get(AUTOLOAD_ENV, "").lower() not in ("1", "true", "yes")
    if autoload:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    for plugin in extra:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        # A misspelled hook would otherwise be silently ignored forever.
        raise ConfigError(f"plugin {pm.get_name(exc.plugin)}", str(exc)) from None
    return pm


def discover(pm: pluggy.PluginManager) -> Mapping[str, Discovered]:
    """Ask every registered package which plugins it provides, by name."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    found: dict[str, Discovered] = {}
    for impl in pm.hook.syncd_plugin.get_hookimpls():
        result = impl.function()
        specs = result if isinstance(result, list) else [result] if result else []
        dist = dists.get(id(impl.plugin))
        package = dist.project_name if dist is not None else "-"
        version = dist.version if dist is not None else "-"
        for spec in specs:
            if not isinstance(spec, PluginSpec):
                raise ConfigError(f"plugin {package}", f"syncd_plugin returned {spec!r}")
            if not _NAME.match(spec.name):
                raise ConfigError(f"plugin {package}", f"invalid plugin name {spec.name!r}")
            if spec.name in found:
                other = found[spec.name].package
                raise ConfigError(
                    f"plugins.{spec.name}", f"provided twice (by {other} and by {package})")
            if not attrs.has(spec.config):
                raise ConfigError(f"plugins.{spec.name}", "its config class is not an attrs class")
            found[spec.name] = Discovered(spec, package, version)
    return dict(sorted(found.items()))
