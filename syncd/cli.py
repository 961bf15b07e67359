"""The ``syncd`` command line."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import click
import trio
import yaml

from syncd import __version__
from syncd.config import Config, load_config, resolve_plugins
from syncd.errors import ConfigError, TransientError
from syncd.logs import setup_logging
from syncd.manager import get_plugin_manager

F = TypeVar("F", bound=Callable[..., Any])

#: Exit status for a wrong configuration (DESIGN.md §5).
EXIT_CONFIG = 2
#: Exit status when a backend cannot be reached (``check``, ``flush``).
EXIT_UNAVAILABLE = 3

config_option = click.option(
    "--config", "-c", "config_path", type=click.Path(dir_okay=False), default=None,
    envvar="SYNCD_CONFIG",
    help="YAML config file (default: ./syncd.yaml if present, else the embedded default).",
)


def fail_on_config_errors(fn: F) -> F:
    """Turn a ConfigError anywhere below into one line on stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"syncd: config error: {exc}", err=True)
            sys.exit(EXIT_CONFIG)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="syncd")
def main() -> None:
    """syncd moves data from Redis into SQL databases, exactly once.

    Each kind of data is handled by a plugin (an installed package in the
    ``syncd`` entry-point group). Configuration comes from a YAML file plus
    SYNCD_* environment variables (``__`` for nesting, e.g.
    SYNCD_PLUGINS__TRAFFIC__INTERVAL=1m).
    """


def _load(config_path: str | None) -> tuple[Config, Any]:
    config = load_config(config_path)
    setup_logging(config.log_level, config.log_format)
    return config, get_plugin_manager()


@main.command()
@config_option
@fail_on_config_errors
def serve(config_path: str | None) -> None:
    """Run every enabled plugin and the HTTP control plane until SIGTERM/SIGINT.

    The first signal stops intake, flushes each plugin (up to shutdown_grace)
    and exits 0; a second signal exits at once.
    """
    from syncd.daemon import Daemon

    config, pm = _load(config_path)
    daemon = Daemon.build(config, pm)

    async def _serve() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(daemon.serve, handle_signals=True))

    trio.run(_serve)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@fail_on_config_errors
def plugins(config_path: str | None, as_json: bool) -> None:
    """List discovered plugins: name, package, version, enabled."""
    from syncd.manager import discover

    config, pm = _load(config_path)
    found = discover(pm)
    settings = resolve_plugins(config, {name: d.spec for name, d in found.items()})
    rows = [
        {
            "name": name,
            "package": d.package,
            "version": d.version,
            "enabled": bool(settings.get(name) and settings[name].enabled),
            "description": d.spec.description,
        }
        for name, d in found.items()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no plugins installed (packages in the 'syncd' entry-point group)")
        return
    width = max(len(r["name"]) for r in rows)
    pkg_width = max(len(r["package"]) for r in rows)
    for r in rows:
        flag = "enabled " if r["enabled"] else "disabled"
        click.echo(f"{r['name']:<{width}}  {r['package']:<{pkg_width}}  {r['version']:<8}  "
                   f"{flag}  {r['description']}")


@main.command()
@config_option
@click.option("--show", is_flag=True, help="Also print the effective config (secrets masked).")
@fail_on_config_errors
def check(config_path: str | None, show: bool) -> None:
    """Validate the config and reach Redis and every database.

    Exits 0 when everything answers, 2 for a config error, 3 when a backend
    cannot be reached.
    """
    from syncd.daemon import Daemon

    config, pm = _load(config_path)
    daemon = Daemon.build(config, pm)
    if show:
        click.echo(yaml.safe_dump(config.redacted(), sort_keys=False).rstrip())

    async def _probe() -> dict[str, dict[str, Any]]:
        try:
            return await daemon.check_backends(timeout=5.0)
        finally:
            daemon.redis.close()
            for db in daemon.databases.values():
                await db.aclose()

    results = trio.run(_probe)
    bad = 0
    for name, result in results.items():
        if result["ok"]:
            click.echo(f"ok    {name} ({result['latency_ms']} ms)")
        else:
            bad += 1
            click.echo(f"FAIL  {name}: {result.get('error')}")
    enabled = [name for name, s in daemon.settings.items() if s.enabled]
    click.echo(f"plugins enabled: {', '.join(enabled) or 'none'}")
    if bad:
        sys.exit(EXIT_UNAVAILABLE)


@main.command()
@config_option
@click.argument("plugin")
@fail_on_config_errors
def flush(config_path: str | None, plugin: str) -> None:
    """Run one plugin once (recovery, then one flush) and exit.

    Useful from cron, or to drain a plugin by hand while the daemon is
    stopped. Prints what was flushed as JSON.
    """
    from syncd.daemon import Daemon

    config, pm = _load(config_path)
    sections = config.plugins or {}
    config = attrs.evolve(
        config,
        plugins={plugin: sections.get(plugin) or {}},
        http=attrs.evolve(config.http, enabled=False),
    )
    daemon = Daemon.build(config, pm)
    runner = daemon.runner(plugin)
    if runner is None:
        raise ConfigError(f"plugins.{plugin}", "is disabled")

    async def _flush_once() -> dict[str, Any]:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.serve)
            try:
                result = await runner.flush()
            finally:
                daemon.request_shutdown()
        return result.as_dict()

    try:
        click.echo(json.dumps(trio.run(_flush_once), default=str))
    except TransientError as exc:
        click.echo(f"syncd: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    except Exception as exc:
        click.echo(f"syncd: flush of {plugin} failed: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
