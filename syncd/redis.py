"""Redis access from Trio: sync redis-py in worker threads, one hop per batch.

STACK-FACTS.md measured a sync pipeline in a thread at 4x the throughput of
redis.asyncio bridged through trio-asyncio, so every Redis call goes through
`RedisHandle.run`, which hops to a thread under a limiter sized to the
connection pool. Threads are never abandoned on cancellation: a blocking
command (BLMOVE) must use a short timeout, and the caller waits for it, so no
thread can take an item after its task is gone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import attrs
import redis
import redis.cluster
import trio

from syncd.errors import RedisUnavailable
from syncd.keys import hash_tag, key_slot, slot_key
from syncd.redact import mask_url, scrub

T = TypeVar("T")

#: Errors that mean "Redis is away", as opposed to a bug or a bad command.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    # A cluster mid-failover or mid-resharding, once redis-py's own retries
    # (MOVED, ASK, TRYAGAIN, a refreshed slot map) are spent: away, not a bug.
    redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
    # On a connection pinned to one cluster node (`RedisHandle.node_for`):
    # its slot moved away, or the node is a replica now.
    redis.exceptions.AskError,
    redis.exceptions.ReadOnlyError,
    ConnectionError,
    OSError,
)


#: ``redis.url`` scheme of a Redis Cluster: ``redis+cluster://[user:pw@]host:port[,host:port...]``.
CLUSTER_SCHEME = "redis+cluster"


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://...``)."""
    return url.lower().startswith(CLUSTER_SCHEME + "://")


@attrs.frozen
class ClusterURL:
    """A parsed ``redis+cluster://`` URL.

    Attributes:
        nodes: ``(host, port)`` of each startup node, in the order written.
        username: Of the ACL user, if any.
        password: If any (the same for every node, as Redis Cluster wants).
    """

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None


def parse_cluster_url(url: str) -> ClusterURL:
    """Parse ``redis+cluster://[user:pw@]host:port[,host:port...]``.

    A cluster has no database number (always 0) and the nodes' own addresses
    come from CLUSTER SLOTS once one startup node answers, so the URL holds
    only the startup nodes and the credentials.

    Raises:
        ValueError: with one line that says what is wrong.
    """
    if not is_cluster_url(url):
        raise ValueError(f"a Redis Cluster URL starts with {CLUSTER_SCHEME}://")
    rest = url[len(CLUSTER_SCHEME) + 3:]
    netloc, _, tail = rest.partition("/")
    netloc, _, query = netloc.partition("?")
    if tail.strip("/").partition("?")[0] not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0: drop the path")
    if query or "?" in tail:
        raise ValueError("a Redis Cluster URL takes no options (?...)")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"each cluster node is host:port, got {item.strip()!r} "
                f"(e.g. {CLUSTER_SCHEME}://10.0.0.1:7000,10.0.0.2:7000)")
        nodes.append((host, int(port)))
    return ClusterURL(tuple(nodes), username, password)


def one_node_url(url: str) -> str:
    """A ``redis://`` URL of one node of ``url`` (``url`` itself unless a cluster).

    For connections that need one node, not a cluster client: a plain
    SUBSCRIBE, which Redis Cluster serves on any node (PUBLISH reaches
    every node). The first startup node is taken; the credentials are kept.
    """
    if not is_cluster_url(url):
        return url
    return node_url(url, *parse_cluster_url(url).nodes[0])


def node_url(url: str, host: str, port: int) -> str:
    """A ``redis://`` URL of the node ``host:port`` of the cluster ``url``, with its credentials."""
    parsed = parse_cluster_url(url)
    if ":" in host:
        host = f"[{host}]"
    auth = ""
    if parsed.username or parsed.password:
        auth = f"{quote(parsed.username or '', safe='')}:{quote(parsed.password or '', safe='')}@"
    return f"redis://{auth}{host}:{port}/0"


def pipeline_script(pipe: Any, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> None:
    """Queue a registered ``script`` on ``pipe`` (EVALSHA), or as EVAL on a cluster
    pipeline, which refuses EVALSHA (redis-py groups its commands by node and
    cannot load a missing script mid-way)."""
    if isinstance(pipe, redis.cluster.ClusterPipeline):
        pipe.execute_command("EVAL", script.script, len(keys), *keys, *args)
    else:
        script(keys=list(keys), args=list(args), client=pipe)


#: Longest a take waits on a cluster for a replica to confirm it (WAIT's bound).
REPLICA_WAIT = 2.0


def confirm_replicated(client: Any, keys: Iterable[str | bytes],
                       timeout: float = REPLICA_WAIT) -> None:
    """On a Redis Cluster, return once every write so far to the masters of
    ``keys`` is on one of their replicas; on a single Redis, at once.

    Why: a master acknowledges a write before its replica has it, and an
    unplanned failover promotes the replica. A take (items moved to a
    processing list, counters renamed into a snapshot) lost that way puts
    the data back where it was after syncd applied it to SQL under the
    take's id: taken again under a new id, it would be counted twice. So a
    take goes to SQL only once a replica holds it. WAIT counts the writes of
    its own connection, so each master gets a small write (a probe key in
    the keys' slot) and WAIT on one connection: Redis' replication stream is
    ordered, so the probe's acknowledgement covers every earlier write.

    A master with no replica connected has nothing to fail over to: no wait.

    Raises:
        redis.exceptions.TryAgainError: no replica confirmed within
            ``timeout`` (`RedisHandle.run` makes it `RedisUnavailable`; the
            take is still in Redis and the next attempt confirms it again).
    """
    if not is_cluster(client):
        return
    probes: dict[str, tuple[Any, str]] = {}
    for key in keys:
        text = key.decode() if isinstance(key, bytes) else key
        node = client.nodes_manager.get_node_from_slot(key_slot(text))
        tag = hash_tag(text)
        probe = f"{{{tag}}}:syncd:replicated" if tag is not None else slot_key(
            text, "syncd:replicated")
        probes.setdefault(node.name, (node, probe))
    for node, probe in probes.values():
        with (moved_is_try_again(client),
              client.get_redis_connection(node).pipeline(transaction=False) as pipe):
            pipe.set(probe, b"1", px=60_000)
            pipe.execute_command("WAIT", 1, max(1, int(timeout * 1000)))
            pipe.delete(probe)  # leaves nothing behind (an operator reads keys)
            _, acked, _ = pipe.execute()
        if int(acked) >= 1:
            continue
        with moved_is_try_again(client):
            connected = client.get_redis_connection(node).info("replication").get(
                "connected_slaves", 0)
        if connected:
            raise redis.exceptions.TryAgainError(
                f"no replica of {node.name} confirmed a take within {timeout:g} s")


@contextlib.contextmanager
def moved_is_try_again(client: Any) -> Iterator[None]:
    """On a master's own connection a moved slot is an error, not a redirect:
    refresh the slot map and report it as TRYAGAIN (so `RedisHandle.run`
    says Redis is unavailable and the work is retried, through the cluster
    client, which follows redirects)."""
    try:
        yield
    except (redis.exceptions.MovedError, redis.exceptions.AskError) as exc:
        client.nodes_manager.initialize()
        raise redis.exceptions.TryAgainError(f"slot moved meanwhile: {exc}") from exc


def is_cluster(client: object) -> bool:
    """Whether ``client`` is a Redis Cluster client (`RedisHandle.cluster` for a bare client)."""
    return isinstance(client, redis.cluster.RedisCluster | LazyCluster)


class LazyCluster:
    """A `redis.cluster.RedisCluster` made on first use, standing in for it.

    RedisCluster connects in its constructor (it reads the slot map), unlike
    redis.Redis. Built lazily, a daemon whose cluster is not up yet starts
    like one whose single Redis is not: its first command fails with a
    connection error (`RedisUnavailable` through `RedisHandle.run`) and the
    supervisor retries. The first command runs in a worker thread, so the
    connect never blocks Trio. Scripts can be registered before that.
    """

    def __init__(self, factory: Callable[[], redis.cluster.RedisCluster]) -> None:
        import threading

        self._factory = factory
        self._lock = threading.Lock()
        self._client: redis.cluster.RedisCluster | None = None

    def _real(self) -> redis.cluster.RedisCluster:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    try:
                        self._client = self._factory()
                    except redis.exceptions.RedisClusterException as exc:
                        # "cannot be connected": away, like a refused connection.
                        raise redis.ConnectionError(str(exc)) from exc
        return self._client

    def register_script(self, script: str) -> Any:
        from redis.commands.core import Script

        return Script(self, script)

    def get_encoder(self) -> Any:
        from redis.connection import Encoder

        return Encoder("utf-8", "strict", False)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)


def scan_masters(
    client: redis.Redis | redis.cluster.RedisCluster,
    match: str | None = None,
    count: int = 1000,
    _type: str | None = None,
    stop: Callable[[], bool] | None = None,
) -> Iterator[bytes]:
    """Every key matching ``match`` (SCAN), on one node or on every master of a cluster.

    A cluster's keys are spread over its masters and SCAN walks one node, so
    anything that must see every key (counter snapshots, orphan lists, test
    clean-up) goes through here. Replicas are skipped: they hold copies. A
    key may be seen twice (SCAN's own guarantee, and a slot migrating
    between masters during the walk): callers de-duplicate. ``stop`` is asked
    between a cluster's SCAN pages; once it says so the walk ends early.
    """
    if not is_cluster(client):
        yield from client.scan_iter(match=match, count=count, _type=_type)
        return
    for node in client.get_primaries():
        cursor = 0
        while True:
            cursor, batch = node_scan(client, node, cursor, match, count, _type)
            yield from batch
            if cursor == 0:
                break
            if stop is not None and stop():
                return  # the caller gave up: it asks stop() again to know


def node_scan(
    client: redis.cluster.RedisCluster,
    node: redis.cluster.ClusterNode,
    cursor: int,
    match: str | None,
    count: int,
    _type: str | None,
) -> tuple[int, list[bytes]]:
    """One SCAN page on one cluster node: ``(next cursor, keys)``.

    Sent on the node's own client: SCAN has no key to route by, and a
    cursor means something only to the node that gave it.
    """
    node_client = node.redis_connection or client.get_redis_connection(node)
    next_cursor, keys = node_client.scan(cursor, match=match, count=count, _type=_type)
    return int(next_cursor), list(keys)


@attrs.define
class RedisHandle:
    """A Redis client shared by every plugin, with its own thread limiter.

    Attributes:
        url: The Redis URL it connects to.
        client: The sync redis-py client (thread-safe: it takes a pooled
            connection per command or pipeline).
        limiter: Caps concurrent threads at the pool size, so a burst of
            callers waits in Trio instead of blocking threads on the pool.
        errors: Called with each connection error (the metrics count them).
    """

    url: str
    client: Any  # redis.Redis, or a LazyCluster standing in for redis.cluster.RedisCluster
    limiter: trio.CapacityLimiter
    on_error: Callable[[BaseException], None] | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        pool_size: int = 16,
        socket_timeout: float = 10.0,
        on_error: Callable[[BaseException], None] | None = None,
        client_name: str | None = None,
    ) -> RedisHandle:
        """A handle on ``url``: a single Redis, or a cluster for ``redis+cluster://``.

        The cluster client (redis-py's `RedisCluster`) is shared by worker
        threads like the single-node one: it keeps a connection pool per node
        (``pool_size`` connections each) and guards its slot map with a lock,
        and every command or pipeline takes its own pooled connection. It
        follows MOVED and ASK by itself and retries TRYAGAIN and a failed-over
        node (refreshing the slot map), within its retry budget.
        """
        options: dict[str, Any] = {
            "client_name": client_name,
            "max_connections": pool_size,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": min(socket_timeout, 5.0),
            "health_check_interval": 30,
            "decode_responses": False,
        }
        if is_cluster_url(url):
            parsed = parse_cluster_url(url)

            # RedisCluster connects in its constructor: made on first use.
            def connect() -> redis.cluster.RedisCluster:
                return redis.cluster.RedisCluster(
                    startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in parsed.nodes],
                    username=parsed.username, password=parsed.password, **options)

            cluster = LazyCluster(connect)
            return cls(url, cluster, trio.CapacityLimiter(pool_size), on_error)
        client = redis.Redis.from_url(url, **options)
        return cls(url, client, trio.CapacityLimiter(pool_size), on_error)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(client, *args)`` in a worker thread and return its result.

        Connection-level failures become `RedisUnavailable`, so callers and
        the supervisor can tell "Redis is away" from a programming error.
        """
        try:
            return await trio.to_thread.run_sync(fn, self.client, *args, limiter=self.limiter)
        except CONNECTION_ERRORS as exc:
            if self.on_error is not None:
                self.on_error(exc)
            raise RedisUnavailable(
                f"redis {mask_url(self.url)}: {scrub(str(exc), self.url)}") from exc

    async def node_for(self, key: str) -> RedisHandle:
        """A handle on the one Redis that serves ``key``: this handle on a
        single Redis; on a cluster, the master of ``key``'s slot as a plain
        Redis (sharing the cluster client's pool for that node).

        For a library that speaks to one Redis only and keeps all its keys
        under one hash tag (BullMQ's Python port; a blocking connection that
        must show up in that node's CLIENT LIST). It does not follow the
        slot: after a resharding or a failover its commands fail (MOVED,
        READONLY, a dead connection) as `RedisUnavailable`; the supervisor
        restarts the plugin, and a new ``node_for`` finds the slot's master.
        """
        if not self.cluster:
            return self

        def find(client: Any) -> tuple[Any, Any]:
            # A keyed command through the cluster client follows MOVED and
            # refreshes its slot map: after a failover the map is current.
            client.exists(key)
            node = client.nodes_manager.get_node_from_slot(key_slot(key))
            return node, client.get_redis_connection(node)

        node, client = await self.run(find)
        return RedisHandle(node_url(self.url, node.host, int(node.port)), client,
                           self.limiter, self.on_error)

    async def ping(self) -> None:
        """Raise `RedisUnavailable` unless Redis answers PING."""
        await self.run(lambda client: client.ping())

    @property
    def cluster(self) -> bool:
        """Whether this is a Redis Cluster: code that must see every key
        scans every master (`scan_masters`) and keeps a script's keys in one slot."""
        return is_cluster(self.client)

    def close(self) -> None:
        self.client.close()
        if not self.cluster:
            self.client.connection_pool.disconnect()
