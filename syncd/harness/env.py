"""The harness's own view of Redis and the databases: plain clients, nothing shared.

A workload must count what arrived without trusting the code under test, so
the harness opens its own redis-py client and its own DB-API connections
(psycopg, pymysql, sqlite3) from the URLs, and hands them to the plugin's
`Workload` as a `WorkloadEnv`.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs
import pluggy
import redis
import redis.cluster

from syncd.manager import discover
from syncd.workload import Workload, WorkloadEnv

#: The databases ``--database pg|mysql`` names (DESIGN.md §5), overridable
#: with the same variables the test fixtures read.
DATABASES = {
    "mysql": os.environ.get("SYNCD_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
    "pg": os.environ.get("SYNCD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
}
REDIS_URL = os.environ.get("SYNCD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

#: Client name of the harness's own Redis connections, so fault injection
#: can never mistake them for syncd's.
HARNESS_CLIENT_NAME = "syncd-harness"

_DIALECTS = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "sqlite": "sqlite",
}


@attrs.frozen
class Target:
    """A database to run against.

    Attributes:
        name: Short label for tables and the config (``pg``, ``mysql``, ``db1``).
        url: Its URL.
    """

    name: str
    url: str

    @property
    def dialect(self) -> str:
        return dialect_of(self.url)


def resolve_databases(choices: Sequence[str]) -> list[Target]:
    """``pg``, ``mysql`` or URLs → targets; none given means both defaults."""
    if not choices:
        return [Target(name, url) for name, url in DATABASES.items()]
    targets: list[Target] = []
    for i, choice in enumerate(choices):
        if choice in DATABASES:
            targets.append(Target(choice, DATABASES[choice]))
            continue
        dialect = dialect_of(choice)  # raises ValueError for an unknown scheme
        name = {"postgresql": "pg", "mysql": "mysql", "sqlite": "sqlite"}[dialect]
        if any(t.name == name for t in targets):
            name = f"{name}{i + 1}"
        targets.append(Target(name, choice))
    return targets


def supports(workload: Workload, target: Target) -> bool:
    """Whether the plugin can write to ``target`` (`Workload.dialects`; empty: any)."""
    return not workload.dialects or target.dialect in workload.dialects


def home_database(workload: Workload) -> str:
    """``pg`` or ``mysql``: the plugin's first dialect (its seed's), else ``pg``."""
    first = workload.dialects[0] if workload.dialects else "postgresql"
    return "mysql" if first == "mysql" else "pg"


def dialect_of(url: str) -> str:
    scheme = urlsplit(url).scheme.split("+", 1)[0].lower()
    try:
        return _DIALECTS[scheme]
    except KeyError:
        raise ValueError(
            f"unsupported database URL {url!r} (use postgresql://, mysql:// or sqlite:///)"
        ) from None


def connector(url: str) -> Callable[[], Any]:
    """A function opening a new DB-API connection to ``url`` (driver defaults:
    autocommit off; the caller commits and closes)."""
    dialect = dialect_of(url)
    parts = urlsplit(url)
    if dialect == "postgresql":
        import psycopg

        dsn = parts._replace(scheme="postgresql").geturl()
        return lambda: psycopg.connect(dsn)
    if dialect == "mysql":
        import pymysql

        kwargs = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 3306,
            "user": unquote(parts.username or "root"),
            "password": unquote(parts.password or ""),
            "database": parts.path.lstrip("/") or None,
            "charset": "utf8mb4",
        }
        return lambda: pymysql.connect(**kwargs)
    path = url.split(":///", 1)[1] if ":///" in url else parts.path
    return lambda: sqlite3.connect(path or ":memory:")


def redis_client_for(url: str, client_name: str | None = None) -> Any:
    """A plain sync redis-py client on ``url``: `redis.Redis`, or a
    `redis.cluster.RedisCluster` for ``redis+cluster://`` (as an application
    on that Redis would use)."""
    from syncd.redis import is_cluster_url, parse_cluster_url

    if not is_cluster_url(url):
        return redis.Redis.from_url(url, client_name=client_name)
    parsed = parse_cluster_url(url)
    return redis.cluster.RedisCluster(
        startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in parsed.nodes],
        username=parsed.username, password=parsed.password, client_name=client_name,
        socket_timeout=10, socket_connect_timeout=5)


@contextmanager
def open_env(database_url: str, prefix: str, redis_url: str = REDIS_URL) -> Iterator[WorkloadEnv]:
    """A `WorkloadEnv` on its own Redis client; the client is closed afterwards."""
    client = redis_client_for(redis_url, client_name=HARNESS_CLIENT_NAME)
    try:
        yield WorkloadEnv(
            redis=client,
            database_url=database_url,
            dialect=dialect_of(database_url),
            connect=connector(database_url),
            prefix=prefix,
        )
    finally:
        client.close()


def clear_keys(client: redis.Redis, prefix: str) -> int:
    """Delete every key containing ``prefix`` (unique per run, so only ours)."""
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"*{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += client.delete(*batch)
            batch.clear()
    if batch:
        deleted += client.delete(*batch)
    return deleted


def unique_prefix(stem: str) -> str:
    """A fresh ``[a-z0-9_]`` name for one plugin's keys and tables in one run."""
    return f"{stem}_{uuid.uuid4().hex[:10]}"


@attrs.frozen
class Subject:
    """One installed plugin under test.

    Attributes:
        plugin: Its name.
        prefix: Unique to this run: every key and table its workload touches.
        workload: What its ``syncd_workload`` hook returned for that prefix.
    """

    plugin: str
    prefix: str
    workload: Workload

    @property
    def label(self) -> str:
        """The plugin's name, with its workload's variant if it has one."""
        return self.workload.label


def find_subjects(
    pm: pluggy.PluginManager, names: Sequence[str] = (), *, stem: str = "h"
) -> list[Subject]:
    """The plugins in ``names`` (default: every installed one with a workload).

    A plugin named explicitly that is not installed, or has no workload, is
    an error; unnamed ones without a workload are simply left out.
    """
    installed = discover(pm)
    unknown = [name for name in names if name not in installed]
    if unknown:
        known = ", ".join(installed) or "none"
        raise LookupError(f"no such plugin installed: {', '.join(unknown)} (installed: {known})")
    subjects: list[Subject] = []
    for name in dict.fromkeys(names or installed):
        prefix = unique_prefix(stem)
        results = [w for w in pm.hook.syncd_workload(plugin=name, prefix=prefix) if w]
        if not results:
            if names:
                raise LookupError(f"plugin {name} provides no workload (syncd_workload hook)")
            continue
        # One hook implementation answers for a plugin; a list holds its variants.
        found = results[0] if isinstance(results[0], list) else [results[0]]
        subjects.extend(Subject(name, workload.prefix or prefix, workload) for workload in found)
    return subjects


def runs(
    pm: pluggy.PluginManager | None,
    plugins: Sequence[str],
    databases: Sequence[str],
    *,
    stem: str,
    progress: Callable[[str], None],
    redis_url: str | None = None,
) -> Iterator[tuple[Subject, Target]]:
    """Every (plugin, database) pair a bench or chaos run covers, in order.

    Plugins whose workload cannot write to a database, or that cannot run on
    ``redis_url`` when it is a Redis Cluster (`PluginSpec.redis_cluster`,
    with the workload's options), are skipped with a progress line saying why.
    """
    from syncd.config import cluster_refusal, structure
    from syncd.manager import get_plugin_manager
    from syncd.redis import is_cluster_url

    pm = pm or get_plugin_manager()
    subjects = find_subjects(pm, plugins, stem=stem)
    targets = resolve_databases(databases)
    cluster = redis_url is not None and is_cluster_url(redis_url)
    specs = {name: found.spec for name, found in discover(pm).items()} if cluster else {}
    if not subjects:
        progress("no installed plugin provides a workload; nothing to do")
    for subject in subjects:
        if cluster:
            spec = specs[subject.plugin]
            refusal = cluster_refusal(spec, structure(
                spec.config, dict(subject.workload.options), f"plugins.{spec.name}"))
            if refusal is not None:
                progress(f"[{stem}] {subject.label}: skipped on Redis Cluster "
                         f"({refusal[0]}: {refusal[1]})")
                continue
        for target in targets:
            if supports(subject.workload, target):
                yield subject, target
            else:
                progress(f"[{stem}] {subject.label}/{target.name}: skipped (the plugin "
                         f"writes to {', '.join(subject.workload.dialects)} only)")
