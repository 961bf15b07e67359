"""A plugin may declare hooks of its own for other packages to implement."""

from __future__ import annotations

import types

import pluggy
import pytest

import syncd
from syncd.errors import ConfigError
from syncd.manager import get_plugin_manager


def _host() -> types.SimpleNamespace:
    """A plugin that declares ``greeting`` and asks for it through the hook relay."""
    specs = types.ModuleType("host_specs")

    @syncd.hookspec(firstresult=True)
    def greeting(name: str) -> str | None:
        """Say hello to ``name``."""

    specs.greeting = greeting

    class Host:
        @syncd.hookimpl
        def syncd_addhooks(self, pluginmanager: pluggy.PluginManager) -> None:
            pluginmanager.add_hookspecs(specs)

    return types.SimpleNamespace(plugin=Host())


class Friend:
    @syncd.hookimpl
    def greeting(self, name: str) -> str:
        return f"hello {name}"


class TestAddHooks:
    """Hooks added by a plugin are checked and called like the core's."""

    @pytest.mark.parametrize("friend_first", [True, False])
    def test_implemented_by_another_package(self, friend_first: bool) -> None:
        host = _host().plugin
        plugins = [Friend(), host] if friend_first else [host, Friend()]
        pm = get_plugin_manager(plugins, autoload=False)
        assert pm.hook.greeting(name="syncd") == "hello syncd"

    def test_without_the_host_the_hook_is_unknown(self) -> None:
        with pytest.raises(ConfigError, match="unknown hook 'greeting'"):
            get_plugin_manager([Friend()], autoload=False)
