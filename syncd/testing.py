"""Pytest fixtures and helpers for syncd and its plugins (a ``pytest11`` plugin).

Plugin packages get these for free once syncd is installed: real Redis,
PostgreSQL and MariaDB URLs (override with ``SYNCD_TEST_REDIS_URL``,
``SYNCD_TEST_PG_URL``, ``SYNCD_TEST_MYSQL_URL``), a unique ``prefix`` for key
and table names so tests never see each other's data, `run_daemon` to
run a whole daemon in the test's nursery, and `wait_for` / `wait_for_sync`
to wait for a condition instead of sleeping and hoping. ``redis_cluster``
starts a real local Redis Cluster once per session (``redis_cluster_url``,
``any_redis_url`` to run a test on both, ``redis_client_for``).
"""

from __future__ import annotations

import inspect
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster
import trio

from syncd.harness.cluster import LocalCluster
from syncd.harness.env import connector, dialect_of, redis_client_for

__all__ = [
    "MYSQL_URL", "PG_URL", "REDIS_URL", "LocalCluster", "connector", "daemon_config",
    "delete_keys", "dialect_of", "redis_client_for", "run_daemon", "unique_prefix", "wait_for",
    "wait_for_sync",
]

from syncd.redis import RedisHandle, parse_cluster_url, scan_masters

REDIS_URL = os.environ.get("SYNCD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_URL = os.environ.get("SYNCD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("SYNCD_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")


def pytest_report_header() -> str | None:
    """Say in the run's header when it runs under ``scripts/test --stress``."""
    hogs = os.environ.get("SYNCD_TEST_CPU_HOGS")
    if hogs:
        return f"syncd: stress mode, {hogs} CPU hog(s) at normal priority"
    return None


def unique_prefix(stem: str = "t") -> str:
    """A fresh ``[a-z0-9_]`` name usable as a Redis key prefix and a table name."""
    return f"{stem}_{uuid.uuid4().hex[:10]}"


@pytest.fixture(name="prefix")
def _prefix() -> Iterator[str]:
    """A unique name for the test's keys and tables; its Redis keys go afterwards."""
    name = unique_prefix()
    yield name
    delete_keys(name)


def delete_keys(prefix: str, url: str | None = None) -> None:
    """Delete every Redis key containing ``prefix`` (tests never FLUSHDB), on
    ``url`` (default: the single test Redis, and the session's cluster if one ran)."""
    urls = [url] if url else [REDIS_URL, *_CLUSTER_URLS]
    for each in urls:
        try:
            client = redis_client_for(each)
        except (redis.ConnectionError, redis.exceptions.RedisClusterException):
            continue  # a test that took Redis away leaves nothing we can reach
        try:
            keys = list(dict.fromkeys(scan_masters(client, match=f"*{prefix}*", count=1000)))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i:i + 1000])
        except (redis.ConnectionError, redis.exceptions.ClusterError):
            pass
        finally:
            client.close()


#: URLs of the clusters this session started (`delete_keys` cleans them too).
_CLUSTER_URLS: list[str] = []


@pytest.fixture(name="redis_cluster", scope="session")
def _redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A real local Redis Cluster (3 masters, 3 replicas), once per session.

    ``SYNCD_TEST_REDIS_CLUSTER_URL`` points the tests at an existing cluster
    instead (its `LocalCluster` then has no processes: tests that fail nodes
    over skip). Skips when ``redis-server`` is not installed.
    """
    given = os.environ.get("SYNCD_TEST_REDIS_CLUSTER_URL")
    if given:
        cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
        cluster.ports = [port for _, port in parse_cluster_url(given).nodes]
        _CLUSTER_URLS.append(given)
        yield cluster
        return
    if not LocalCluster.available():
        pytest.skip("redis-server / redis-cli not installed (scripts/test installs them)")
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    _CLUSTER_URLS.append(cluster.url)
    try:
        yield cluster
    finally:
        _CLUSTER_URLS.remove(cluster.url)
        cluster.stop()


@pytest.fixture(name="redis_cluster_url")
def _redis_cluster_url(redis_cluster: LocalCluster) -> str:
    """The session's Redis Cluster as a ``redis+cluster://`` URL."""
    return redis_cluster.url


@pytest.fixture(name="any_redis_url", params=["redis", "cluster"])
def _any_redis_url(request: pytest.FixtureRequest) -> str:
    """Single Redis, then the session's Redis Cluster: a test that takes this
    runs on both (its ids end in ``[redis]`` / ``[cluster]``)."""
    if request.param == "redis":
        return REDIS_URL
    return request.getfixturevalue("redis_cluster_url")


@pytest.fixture(name="redis_url")
def _redis_url(request: pytest.FixtureRequest) -> str:
    """Single Redis, unless a test asks for ``"cluster"`` by indirect
    parametrization (``@pytest.mark.parametrize("redis_url", ["cluster"],
    indirect=True)``): then the session's Redis Cluster."""
    if getattr(request, "param", "redis") == "cluster":
        return request.getfixturevalue("redis_cluster_url")
    return REDIS_URL


@pytest.fixture(name="pg_url")
def _pg_url() -> str:
    return PG_URL


@pytest.fixture(name="mysql_url")
def _mysql_url() -> str:
    return MYSQL_URL


@pytest.fixture(name="sqlite_url")
def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'syncd-test.sqlite3'}"


@pytest.fixture(name="redis_client")
def _redis_client(prefix: str) -> Iterator[redis.Redis]:
    """A sync client; every key under ``prefix`` is deleted afterwards (by ``prefix``)."""
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture(name="redis_handle")
async def _redis_handle(redis_client: redis.Redis) -> AsyncIterator[RedisHandle]:
    """syncd's own Redis handle; closed afterwards, and (via ``redis_client``) every
    key under ``prefix`` is deleted once it is closed."""
    handle = RedisHandle.from_url(REDIS_URL, pool_size=8)
    yield handle
    handle.close()


def daemon_config(
    plugins: Mapping[str, Any] | None = None,
    databases: Mapping[str, str] | None = None,
    *,
    http: bool = False,
    token: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A config mapping for tests: real Redis, HTTP on an ephemeral loopback port."""
    config: dict[str, Any] = {
        "redis": {"url": REDIS_URL},
        "databases": dict(databases or {"default": PG_URL}),
        "http": {"listen": "127.0.0.1:0", "enabled": http, "token": token},
        "shutdown_grace": "10s",
        "restart_backoff_max": "1s",
        "plugins": dict(plugins or {}),
        "instance": f"test-{uuid.uuid4().hex[:8]}",
    }
    config.update(overrides)
    return config


@asynccontextmanager
async def run_daemon(
    config: Mapping[str, Any], plugins: Iterable[object] = (), *, autoload: bool = False
) -> AsyncIterator[Any]:
    """Run a daemon built from ``config`` in a nursery; stop it gracefully on exit.

    ``plugins`` are modules or objects with ``@syncd.hookimpl`` functions,
    registered directly; ``autoload=True`` also loads installed entry points.
    """
    from syncd.config import parse_config
    from syncd.daemon import Daemon
    from syncd.manager import get_plugin_manager

    parsed = parse_config(config)
    pm = get_plugin_manager(plugins, autoload=autoload)
    daemon = Daemon.build(parsed, pm)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.serve)
        try:
            yield daemon
        finally:
            daemon.request_shutdown()


#: How long `wait_for` waits unless told otherwise. Generous on purpose: a
#: condition that holds returns at once, so only a failing test pays for it,
#: and a shared 2-core CI machine under load can be many times slower than a
#: laptop.
WAIT_TIMEOUT = 30.0


async def wait_for(
    predicate: Callable[[], Any],
    timeout: float = WAIT_TIMEOUT,
    interval: float = 0.02,
    *,
    describe: Callable[[], Any] | None = None,
    ignore: tuple[type[Exception], ...] = (),
) -> Any:
    """Wait until ``predicate()`` holds, or fail after ``timeout`` seconds with what was last seen.

    Use it wherever a test needs a state that the code reaches on its own
    time ("the plugin is failed", "the queue is drained"), instead of a
    ``sleep`` and an assertion that bets on how fast the machine is.

    ``predicate`` may be sync or async; it is called every ``interval``
    seconds and its first truthy result is returned, so it can hand back what
    the test checks next (``body = await wait_for(ready_body)``). On timeout
    the `AssertionError` names the condition (the source of a lambda), the
    last value it returned (or the exception it raised, if its type is in
    ``ignore``) and, if given, ``describe()``: whatever shows why it did not
    hold (``describe=runner.status``).

    Exceptions of the types in ``ignore`` count as "not yet"; any other
    propagates at once.
    """
    last: Any = _NOT_CALLED
    with trio.move_on_after(timeout):
        while True:
            try:
                last = await _call(predicate)
            except ignore as exc:
                last = exc
            else:
                if last:
                    return last
            await trio.sleep(interval)
    shown = None
    if describe is not None:
        with trio.move_on_after(max(5.0, interval)):
            shown = await _describe(describe)
    raise AssertionError(_timeout_message(predicate, timeout, last, describe, shown))


def wait_for_sync(
    predicate: Callable[[], Any],
    timeout: float = WAIT_TIMEOUT,
    interval: float = 0.05,
    *,
    describe: Callable[[], Any] | None = None,
    ignore: tuple[type[Exception], ...] = (),
) -> Any:
    """`wait_for` for synchronous tests (subprocesses, plain threads): same contract."""
    deadline = time.monotonic() + timeout
    last: Any = _NOT_CALLED
    while True:
        try:
            last = predicate()
        except ignore as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    shown = None
    if describe is not None:
        try:
            shown = repr(describe())
        except Exception as exc:
            shown = f"describe() raised {exc!r}"
    raise AssertionError(_timeout_message(predicate, timeout, last, describe, shown))


class _NotCalled:
    def __repr__(self) -> str:
        return "nothing (the condition was never evaluated)"


_NOT_CALLED = _NotCalled()


async def _call(fn: Callable[[], Any]) -> Any:
    result = fn()
    if inspect.isawaitable(result):
        result = await result
    return result


async def _describe(describe: Callable[[], Any]) -> str:
    try:
        return repr(await _call(describe))
    except Exception as exc:
        return f"describe() raised {exc!r}"


def _timeout_message(
    predicate: Callable[[], Any], timeout: float, last: Any,
    describe: Callable[[], Any] | None, shown: str | None,
) -> str:
    lines = [f"not true within {timeout:g}s: {_source_of(predicate)}",
             f"  last seen: {last!r}"]
    if describe is not None:
        lines.append(f"  describe(): {shown}")
    return "\n".join(lines)


def _source_of(fn: Callable[[], Any]) -> str:
    """The lambda's source line (the call that waits), else the function's name."""
    if getattr(fn, "__name__", "") == "<lambda>":
        try:
            return " ".join(inspect.getsource(fn).split())
        except (OSError, TypeError):
            pass
    return getattr(fn, "__qualname__", None) or repr(fn)
