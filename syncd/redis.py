"""Redis access from Trio: sync redis-py in worker threads, one hop per batch.

STACK-FACTS.md measured a sync pipeline in a thread at 4x the throughput of
redis.asyncio bridged through trio-asyncio, so every Redis call goes through
`RedisHandle.run`, which hops to a thread under a limiter sized to the
connection pool. Threads are never abandoned on cancellation: a blocking
command (BLMOVE) must use a short timeout, and the caller waits for it, so no
thread can take an item after its task is gone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import attrs
import redis
import trio

from syncd.errors import RedisUnavailable
from syncd.redact import mask_url, scrub

T = TypeVar("T")

#: Errors that mean "Redis is away", as opposed to a bug or a bad command.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    ConnectionError,
    OSError,
)


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
    client: redis.Redis
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
        client = redis.Redis.from_url(
            url,
            client_name=client_name,
            max_connections=pool_size,
            socket_timeout=socket_timeout,
            socket_connect_timeout=min(socket_timeout, 5.0),
            health_check_interval=30,
            decode_responses=False,
        )
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

    async def ping(self) -> None:
        """Raise `RedisUnavailable` unless Redis answers PING."""
        await self.run(lambda client: client.ping())

    def close(self) -> None:
        self.client.close()
        self.client.connection_pool.disconnect()
