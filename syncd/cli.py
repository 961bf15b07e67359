"""The ``syncd`` command line."""

from __future__ import annotations

import functools
import json
import os
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
from syncd.redact import scrub

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
    """Turn a ConfigError anywhere below into one line on stderr and exit 2.

    Also one found inside exception groups: a setting that only fails once
    the daemon runs (``http.listen`` on a port in use) comes out of nurseries.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, BaseExceptionGroup) as exc:
            error = _config_error_in(exc)
            if error is None:
                raise
            click.echo(f"syncd: config error: {error}", err=True)
            sys.exit(EXIT_CONFIG)

    return wrapper  # type: ignore[return-value]


def _config_error_in(exc: BaseException) -> ConfigError | None:
    """``exc`` if it is a ConfigError, or the one in its groups that caused
    the rest (everything else in them is cancellation)."""
    if isinstance(exc, ConfigError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        errors, rest = exc.split(ConfigError)
        if errors is not None and (rest is None or rest.split(trio.Cancelled)[1] is None):
            found = errors
            while isinstance(found, BaseExceptionGroup):
                found = found.exceptions[0]
            return found  # type: ignore[return-value]
    return None


def _scrubbed(message: str, config: Config) -> str:
    """``message`` without any secret of the configured URLs."""
    return scrub(message, config.redis.url, *config.databases.values())


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
    trio.run(functools.partial(daemon.serve, handle_signals=True))


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
            click.echo(f"FAIL  {name}: {_scrubbed(str(result.get('error')), config)}")
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
    stopped. Prints what was flushed as JSON. An exclusive plugin whose lease
    a running replica holds is not flushed (exit 1, naming that replica):
    flush it there, over HTTP.
    """
    from syncd.daemon import Daemon

    config, pm = _load(config_path)
    sections = config.plugins or {}
    config = attrs.evolve(
        config,
        plugins={plugin: sections.get(plugin) or {}},
        http=attrs.evolve(config.http, enabled=False),
        # Its own identity: a daemon may be running with the configured one,
        # and two processes must never share per-consumer processing lists.
        # Anything this run leaves in flight is reclaimed like a dead replica's.
        instance=f"{config.instance}.flush{os.getpid()}",
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
        click.echo(f"syncd: {_scrubbed(str(exc), config)}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    except ConfigError:
        raise
    except Exception as exc:
        click.echo(f"syncd: flush of {plugin} failed: {_scrubbed(str(exc), config)}", err=True)
        sys.exit(1)


# -- proving it: benchmarks and chaos (bodies in syncd.harness) ----------------------

plugin_option = click.option(
    "--plugin", "plugins", multiple=True, metavar="NAME",
    help="A plugin to run (repeatable; default: every installed plugin with a workload).",
)
database_option = click.option(
    "--database", "databases", multiple=True, metavar="pg|mysql|URL",
    help="A database to run against (repeatable; default: both pg and mysql).",
)
redis_option = click.option(
    "--redis", "redis_url", default=None, metavar="URL",
    help="Redis to use (default: redis://127.0.0.1:6379/0 or SYNCD_TEST_REDIS_URL).",
)
out_option = click.option(
    "--out", type=click.Path(file_okay=False), default="bench/results",
    show_default=True, help="Folder for the result files.",
)


@main.command()
@plugin_option
@database_option
@click.option("-n", "--items", type=click.IntRange(1), default=20_000, show_default=True,
              help="Items per run.")
@click.option("--repeat", type=click.IntRange(1), default=1, show_default=True,
              help="Rounds of syncd, baseline, ceiling (interleaved; rates are medians).")
@redis_option
@out_option
def bench(plugins: tuple[str, ...], databases: tuple[str, ...], items: int, repeat: int,
          redis_url: str | None, out: str) -> None:
    """Measure each plugin against its seed's algorithm and the database's ceiling.

    For every plugin x database, on the same N items: syncd (the real daemon,
    in-process, draining N pre-loaded items), the seed's algorithm, and the
    raw database ceiling. Prints a table with the ratios, checks syncd's
    tally, and writes <out>/<UTC timestamp>.md, .json and .png. Exit 1 if a
    tally was wrong.
    """
    from pathlib import Path

    from syncd.harness.bench import BenchOptions
    from syncd.harness.commands import bench_main

    options = BenchOptions(plugins=plugins, databases=databases, items=items, repeat=repeat,
                           **({"redis_url": redis_url} if redis_url else {}))
    sys.exit(bench_main(options, Path(out)))


@main.command()
@plugin_option
@database_option
@click.option("--kills", type=click.IntRange(0), default=20, show_default=True,
              help="SIGKILL + restart cycles per plugin x database.")
@click.option("--rate", type=click.FloatRange(min=1), default=2000, show_default=True,
              help="Items produced per second meanwhile.")
@click.option("--duration-cap", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Seconds after which no more faults are injected (per plugin x database).")
@click.option("--drain-timeout", type=click.FloatRange(min=1), default=120, show_default=True,
              help="Seconds syncd may take to drain once producers stop.")
@click.option("--seed", type=int, default=None, help="Seed of the random schedule (replay).")
@click.option("--replicas", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Daemons side by side (then also SIGSTOP/SIGCONT of one at random).")
@redis_option
@click.option("--redis-cluster", is_flag=True,
              help="Run on a local Redis Cluster (3 masters, 3 replicas) started for the run; "
                   "or pass --redis redis+cluster://host:port,... for one of yours.")
@out_option
def chaos(plugins: tuple[str, ...], databases: tuple[str, ...], kills: int, rate: float,
          duration_cap: float, drain_timeout: float, seed: int | None, replicas: int,
          redis_url: str | None, redis_cluster: bool, out: str) -> None:
    """Kill syncd in every way under load, then check every item arrived exactly once.

    Producers run at --rate while `syncd serve` is SIGKILLed and restarted,
    its database and Redis connections are killed from the server side, and
    the plugin is paused and resumed. With --replicas N, N daemons run side by
    side, each fault hits one at random, and replicas are also frozen
    (SIGSTOP) and thawed (SIGCONT). Then syncd drains, must exit 0 on
    SIGTERM, and the tally must show nothing lost or doubled. Writes
    <out>/chaos-<UTC timestamp>.md and .json. Exit 1 on any loss or duplicate.
    """
    import tempfile
    from pathlib import Path

    from syncd.harness.chaos import ChaosOptions
    from syncd.harness.cluster import LocalCluster
    from syncd.harness.commands import chaos_main

    if redis_cluster:
        if redis_url:
            raise click.UsageError("--redis-cluster starts its own cluster: drop --redis")
        if not LocalCluster.available():
            raise click.UsageError("--redis-cluster needs redis-server and redis-cli installed")
        with tempfile.TemporaryDirectory(prefix="syncd-chaos-cluster-") as folder:
            cluster = LocalCluster(Path(folder)).start()
            try:
                click.echo(f"[chaos] local Redis Cluster: {cluster.url}", err=True)
                ctx = click.get_current_context()
                ctx.invoke(chaos, plugins=plugins, databases=databases, kills=kills, rate=rate,
                           duration_cap=duration_cap, drain_timeout=drain_timeout, seed=seed,
                           replicas=replicas, redis_url=cluster.url, redis_cluster=False,
                           out=out)
            finally:
                cluster.stop()
        return
    options = ChaosOptions(
        plugins=plugins, databases=databases, kills=kills, rate=rate,
        duration_cap=duration_cap, drain_timeout=drain_timeout, replicas=replicas,
        **({"seed": seed} if seed is not None else {}),
        **({"redis_url": redis_url} if redis_url else {}),
    )
    sys.exit(chaos_main(options, Path(out)))


# -- dead letters (body in syncd.cli_deadletters) ------------------------------------

from syncd.cli_deadletters import dead_letters  # noqa: E402 - kept apart from the commands above

main.add_command(dead_letters)


if __name__ == "__main__":  # pragma: no cover
    main()
