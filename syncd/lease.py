"""Leases and fencing tokens: at most one replica runs an exclusive plugin.

Replicas of an exclusive plugin (counter plugins by default, any plugin with
``exclusive: true``) take turns under a lease named after the data they
share. The replica holding it runs the plugin and renews it every third of
``lease_ttl``; the others stand by, look again as it is due to expire, and
take it over within ``lease_ttl`` of the holder dying, freezing or pausing.

A lease alone cannot stop a holder that froze (a GC pause, SIGSTOP, a VM
migration) from waking up and committing what it had in hand after another
replica took over. So every acquisition bumps a **fencing token**, the
worker started under the lease carries it (`Fence`), and its database
(`FencedDatabase`, handed to the plugin as ``ctx.database``) checks it in
the very transaction that commits each batch: a stale token rolls the
batch back and raises `syncd.Fenced`, however late the replica wakes up.

Where the lease lives:

- a plugin with a SQL database: in that database, table ``syncd_leases``
  (`syncd.sql.leases`), on the database's clock. The check is then atomic
  with the commit: a replica whose lease has passed to another can never
  commit.
- a plugin without one (``uses_database=False``): in Redis (`RedisLeaseStore`),
  on Redis' clock. Weaker: Redis cannot take part in the plugin's writes
  elsewhere (files, webhooks), so a holder frozen past its lease may still
  write once when it wakes, before its next renewal tells it the lease is
  gone. ``ctx.fence`` carries the token for a sink that can check it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs
import trio

from syncd.errors import DatabaseUnavailable, Fenced
from syncd.keys import slot_key
from syncd.sql import leases as sql_leases

if TYPE_CHECKING:
    from syncd.redis import RedisHandle
    from syncd.sql import Database, IncrementResult, InsertResult, Transaction

T = TypeVar("T")

#: Seconds a standby replica waits past the holder's expiry before it asks,
#: so that its clock-skewed "now" does not find it a hair too early.
EXPIRY_MARGIN = 0.05


@attrs.define(eq=False)
class Fence:
    """The lease one worker runs under: its name and fencing token.

    Attributes:
        name: The lease's name.
        token: The fencing token of the acquisition the worker was started
            under; None until the lease is granted (a worker built before
            its replica took the lease has a fence that cannot commit yet).
        on_refused: Called with the `Fenced` error of each commit the
            database refused under this fence (the supervisor's bookkeeping).
    """

    name: str
    token: int | None = None
    on_refused: Callable[[Fenced], None] | None = attrs.field(default=None, repr=False)

    def refused(self, exc: Fenced) -> None:
        if self.on_refused is not None:
            self.on_refused(exc)


@attrs.frozen
class LeaseView:
    """What an acquisition attempt found.

    Attributes:
        held: Whether the asker holds the lease now.
        holder: Who took it last (the asker, when ``held``).
        token: Its current fencing token.
        since: When ``holder`` took it, by the store's clock.
        expires_in: Seconds until it expires, by the store's clock (zero or
            less: anyone may take it).
        previous: When the asker just took it over: who held it before.
    """

    held: bool
    holder: str | None = None
    token: int | None = None
    since: datetime | None = None
    expires_in: float | None = None
    previous: str | None = None


class LeaseStore(Protocol):
    """Where leases are kept: `SQLLeaseStore` or `RedisLeaseStore`."""

    kind: str

    async def acquire(self, name: str, plugin: str, holder: str, ttl: float) -> LeaseView:
        """Take the lease if it is free, expired, or ``holder``'s already (new token)."""
        ...

    async def renew(self, name: str, token: int, ttl: float) -> tuple[bool, bool]:
        """Extend it by ``ttl`` if ``token`` still holds it. Returns whether it
        does, and whether another replica asked for it within the last ``ttl``."""
        ...

    async def release(self, name: str, token: int) -> None:
        """Let another replica take it at once, if ``token`` still holds it."""
        ...


@attrs.define(eq=False)
class SQLLeaseStore:
    """Leases in the plugin's own database (`syncd.sql.leases`).

    The table is created on first use, catalog first, once per process.
    """

    db: Database
    kind: str = "sql"

    async def acquire(self, name: str, plugin: str, holder: str, ttl: float) -> LeaseView:
        await self._setup()
        got = await self.db.transaction(
            lambda tx: sql_leases.acquire(tx, name, plugin, holder, ttl))
        row = got.row
        return LeaseView(got.held, row.holder, row.token, row.acquired_at, row.expires_in,
                         got.previous.holder if got.previous is not None else None)

    async def renew(self, name: str, token: int, ttl: float) -> tuple[bool, bool]:
        row = await self.db.transaction(lambda tx: sql_leases.renew(tx, name, token, ttl))
        if row is None:
            return False, False
        return True, row.asked_ago is not None and row.asked_ago <= ttl

    async def release(self, name: str, token: int) -> None:
        await self.db.transaction(lambda tx: sql_leases.release(tx, name, token))

    async def _setup(self) -> None:
        try:
            await self.db.setup_once("syncd:leases", sql_leases.ensure_table)
        except DatabaseUnavailable:
            raise
        except Exception:
            # Another replica created it at the same instant (PostgreSQL can
            # fail the loser of a concurrent CREATE): look again.
            await self.db.setup_once("syncd:leases", sql_leases.ensure_table)


# A lease is one hash without a TTL (so its token outlives any holder):
# holder, plugin, token, since and expires (ms, Redis' clock).
# KEYS: the lease.  ARGV: holder, plugin, ttl ms.
# Returns {held 0/1, holder, token, since ms, expires in ms, previous holder or false}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('HMGET', KEYS[1], 'holder', 'token', 'since', 'expires')
if cur[1] and cur[1] ~= ARGV[1] and tonumber(cur[4]) > now then
  redis.call('HSET', KEYS[1], 'asked', now)
  return {0, cur[1], tonumber(cur[2]), tonumber(cur[3]), tonumber(cur[4]) - now, false}
end
local token = redis.call('HINCRBY', KEYS[1], 'token', 1)
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'plugin', ARGV[2], 'since', now,
           'expires', now + tonumber(ARGV[3]))
return {1, ARGV[1], token, now, tonumber(ARGV[3]), cur[1] or false}
"""

# KEYS: the lease.  ARGV: token, ttl ms (0: release, expire now).
# Returns {1 if ours, ms since another replica asked for it (-1: never)}.
_RENEW = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return {0, -1} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'expires', now + tonumber(ARGV[2]))
local asked = redis.call('HGET', KEYS[1], 'asked')
return {1, asked and now - tonumber(asked) or -1}
"""


@attrs.define(eq=False)
class RedisLeaseStore:
    """Leases in Redis, for plugins without a SQL database (see the module's caveat).

    Key: ``{syncd:lease}:<name>``, a hash; every lease in one Cluster slot.
    """

    redis: RedisHandle
    kind: str = "redis"
    _scripts: dict[str, Any] = attrs.field(init=False, factory=dict, repr=False)

    def __attrs_post_init__(self) -> None:
        client = self.redis.client
        self._scripts = {"acquire": client.register_script(_ACQUIRE),
                         "renew": client.register_script(_RENEW)}

    @staticmethod
    def key(name: str) -> str:
        return slot_key("syncd:lease", name)

    async def acquire(self, name: str, plugin: str, holder: str, ttl: float) -> LeaseView:
        script = self._scripts["acquire"]
        held, who, token, since, left, previous = await self.redis.run(
            lambda client: script(keys=[self.key(name)], args=[holder, plugin, _ms(ttl)],
                                  client=client))
        return LeaseView(bool(held), _text(who), int(token),
                         datetime.fromtimestamp(int(since) / 1000, UTC), int(left) / 1000,
                         _text(previous) if previous else None)

    async def renew(self, name: str, token: int, ttl: float) -> tuple[bool, bool]:
        held, asked_ago = await self._renew(name, token, _ms(ttl))
        return bool(held), 0 <= int(asked_ago) <= _ms(ttl)

    async def release(self, name: str, token: int) -> None:
        await self._renew(name, token, 0)

    async def _renew(self, name: str, token: int, ms: int) -> tuple[int, int]:
        script = self._scripts["renew"]
        held, asked_ago = await self.redis.run(
            lambda client: script(keys=[self.key(name)], args=[token, ms], client=client))
        return int(held), int(asked_ago)


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


@attrs.define(eq=False)
class Lease:
    """This replica's side of one lease: take it, renew it, know whether it holds it.

    Attributes:
        store: Where the lease is kept.
        name: What the replicas sharing it call it.
        plugin: The plugin it is for.
        holder: This replica's ``instance``.
        ttl: Seconds it lasts without a renewal.
        token: The fencing token while this replica holds it, else None.
        seen: What the last acquisition attempt found.
        contested: Whether, at the last renewal, another replica was waiting
            for it (asked within a ttl): a paused holder then hands it over.
    """

    store: LeaseStore
    name: str
    plugin: str
    holder: str
    ttl: float
    token: int | None = None
    seen: LeaseView | None = None
    #: Whether, at the last renewal, another replica was waiting for the lease.
    contested: bool = False
    #: When (trio time) the last acquisition or renewal that succeeded began:
    #: the store may have stamped it any time after, never before.
    _confirmed: float = -math.inf

    @property
    def held(self) -> bool:
        return self.token is not None

    @property
    def renew_every(self) -> float:
        """Renewals come every third of the ttl: two may fail before it expires."""
        return self.ttl / 3

    @property
    def overdue(self) -> bool:
        """Whether a whole ttl has passed since the store last confirmed the lease:
        as far as this replica can tell, another may hold it now."""
        return trio.current_time() - self._confirmed >= self.ttl

    async def acquire(self) -> bool:
        """Try once to take the lease; True if this replica holds it now (with a new token)."""
        started = trio.current_time()
        seen = await self.store.acquire(self.name, self.plugin, self.holder, self.ttl)
        self.seen = seen
        if seen.held:
            self.token = seen.token
            self._confirmed = started
        else:
            self.token = None
        self.contested = False
        return seen.held

    async def renew(self) -> bool:
        """Extend the lease; False if it has passed to another replica (then it is dropped)."""
        token = self.token
        if token is None:
            return False
        started = trio.current_time()
        held, self.contested = await self.store.renew(self.name, token, self.ttl)
        if not held:
            self.drop()
            return False
        self._confirmed = started
        return True

    async def release(self) -> None:
        """Hand the lease back now (shutdown, pause), so a standby replica need not
        wait for it to expire."""
        token, self.token = self.token, None
        if token is not None:
            await self.store.release(self.name, token)

    def drop(self) -> None:
        """Forget the token: this replica no longer holds the lease.

        What it last saw named itself as the holder, which is no longer true:
        until it asks again, it does not know who holds the lease, and its
        status must not claim it does.
        """
        self.token = None
        if self.seen is not None and self.seen.holder == self.holder:
            self.seen = None

    def standby_delay(self) -> float:
        """How long a standby replica waits before it asks again: until just after
        the lease is due to expire, but at most a third of the ttl (a holder that
        shuts down or pauses hands it back early)."""
        left = self.seen.expires_in if self.seen is not None else None
        if left is None:
            return self.renew_every
        return max(EXPIRY_MARGIN, min(self.renew_every, left + EXPIRY_MARGIN))

    def status(self) -> dict[str, Any]:
        """For ``/plugins/{name}``: who holds the lease, since when, with which token."""
        seen = self.seen
        holder = seen.holder if seen is not None else None
        if not self.held and seen is not None and (seen.expires_in or 0) <= 0:
            holder = None  # expired: free for the taking
        return {
            "name": self.name,
            "store": self.store.kind,
            "ttl_seconds": self.ttl,
            "held": self.held,
            "holder": holder,
            "token": self.token if self.held else (seen.token if seen is not None else None),
            "since": _iso(seen.since) if seen is not None and holder is not None else None,
        }


def _iso(when: datetime | None) -> str | None:
    if when is None:
        return None
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class FencedDatabase:
    """An exclusive plugin's ``ctx.database``: its `syncd.Database`, every write fenced.

    ``apply_batch`` and ``transaction`` (and the one-statement writes built on
    them) check the worker's `Fence` in the transaction they commit
    (`Transaction.check_fence`), so plugins need not change to be fenced;
    their other options pass through as they are. Reads, start-up DDL
    (``setup_once``) and everything else go straight to the database.
    """

    def __init__(self, db: Database, fence: Fence) -> None:
        self._db = db
        self.fence = fence

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def __repr__(self) -> str:
        return f"FencedDatabase({self._db!r}, {self.fence!r})"

    async def apply_batch(
        self, plugin: str, batch_id: str, fn: Callable[[Transaction], T], **options: Any,
    ) -> tuple[bool, T | None]:
        return await self._db.apply_batch(plugin, batch_id, fn, fence=self.fence, **options)

    async def transaction(self, fn: Callable[[Transaction], T], **options: Any) -> Any:
        return await self._db.transaction(fn, fence=self.fence, **options)

    async def execute(self, sql: str, params: Sequence[Any] | None = None) -> int:
        return await self.transaction(lambda tx: tx.execute(sql, params))

    async def insert_ignore(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *,
        isolate: bool = False,
    ) -> InsertResult:
        return await self.transaction(
            lambda tx: tx.insert_ignore(table, columns, rows, isolate=isolate))

    async def increment(
        self, table: str, key_column: str, columns: Sequence[str],
        rows: Sequence[Sequence[Any]], *, insert_missing: bool = False, isolate: bool = False,
        totals: bool = False,
    ) -> IncrementResult:
        return await self.transaction(lambda tx: tx.increment(
            table, key_column, columns, rows, insert_missing=insert_missing, isolate=isolate,
            totals=totals))

