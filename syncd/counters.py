"""Atomic snapshot-and-reset of counters that the application keeps incrementing.

The seeds read a counter, write it to SQL, then delete it: every increment
that lands between the read and the delete is lost. Here one Lua script
RENAMEs each counter key into an in-flight area and reads it there, so an
increment lands either before the rename (it is in the snapshot) or after it
(it creates a fresh key that the next snapshot takes): none is lost or
counted twice. The in-flight copy stays in Redis, without a TTL, until the
caller has applied it to SQL under the snapshot id (recorded in its ledger in
the same transaction) and called `CounterSnapshots.commit`. After a crash at
any point, `CounterSnapshots.snapshot` returns the same in-flight snapshot
again, the ledger says whether it was applied, and commit clears it.

Redis keys, for ``inflight_prefix`` (e.g. ``syncd:inflight:traffic``):

``{inflight_prefix}:current``
    The id of the snapshot in flight; at most one at a time.
``{inflight_prefix}:{id}:keys``
    Set of the original key names in that snapshot.
``{inflight_prefix}:{id}:{original key}``
    The counter as it was when taken (PERSISTed: in-flight data must not
    expire, even though the application's keys carry a TTL).

Only keys of the configured type are taken (``SCAN ... TYPE``): a key of
another type that happens to match the pattern is not a counter of ours and
is left alone rather than blocking every flush. Bad *values* are the caller's
to judge; it passes them to `CounterSnapshots.commit` as dead letters.

Cluster: no key name is computed inside Lua (the scripts get every key in
KEYS), but one snapshot moves keys from many hash slots in one script, which
Redis Cluster refuses. Single-node Redis is the target; a Cluster deployment
would need one snapshot per slot (or hash-tagged counter keys).

Several replicas: a replica that finds another's snapshot in flight gets it
too (``recovered``); both may apply it, the ledger lets only one through, and
only one commit removes it. A lease (DESIGN.md §7) avoids the wasted work.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs

from syncd.deadletter import DeadLetter, script_args

if TYPE_CHECKING:
    import redis as redis_py

    from syncd.redis import RedisHandle

Kind = Literal["hash", "string"]
Values = dict[str, bytes] | bytes

# Move the scanned keys into the in-flight area and read them, atomically.
# Keys that vanished or changed type since the SCAN are skipped. If a
# snapshot is already in flight (a replayed call, another replica), do
# nothing: the caller loads that one.
# KEYS: current, key set, then pairs (original key, in-flight key).
# ARGV: snapshot id, kind ('hash' | 'string').
# Returns {0} if one is in flight, else {1, key, value, key, value, ...}.
_SNAPSHOT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
local out = {1}
for i = 3, #KEYS, 2 do
  local src, dst = KEYS[i], KEYS[i + 1]
  if redis.call('TYPE', src).ok == ARGV[2] then
    redis.call('RENAME', src, dst)
    redis.call('PERSIST', dst)
    redis.call('SADD', KEYS[2], src)
    out[#out + 1] = src
    if ARGV[2] == 'hash' then
      out[#out + 1] = redis.call('HGETALL', dst)
    else
      out[#out + 1] = redis.call('GET', dst)
    end
  end
end
if #out > 1 then redis.call('SET', KEYS[1], ARGV[1]) end
return out
"""

# Finish a snapshot: only if it is still the one in flight, push its dead
# letters and delete the in-flight copies, the key set and the id.
# KEYS: current, key set, dead-letter lists (ARGV[2] of them), in-flight keys.
# ARGV: snapshot id, number of dead-letter lists, [list index, entry]...
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local lists = tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  redis.call('RPUSH', KEYS[2 + tonumber(ARGV[i])], ARGV[i + 1])
end
for i = 3 + lists, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""


@attrs.frozen
class Snapshot:
    """Counters taken out of circulation; apply under ``id``, then commit.

    Attributes:
        id: Unique per snapshot and stable across crashes: the ledger key.
        entries: ``(original key, values)``: for hashes a field → raw value
            dict, for strings the raw value. Values are not parsed: deciding
            what is valid is the plugin's job.
        recovered: Found in flight (left over from a crash, or another
            replica's): it may already be applied, so the ledger decides.
        raw_keys: The original key names as bytes, for `commit`.
    """

    id: str
    entries: list[tuple[str, Values]]
    recovered: bool = False
    raw_keys: tuple[bytes, ...] = attrs.field(default=(), repr=False)

    def __len__(self) -> int:
        return len(self.entries)


def _text(value: bytes | str) -> str:
    # Key and field names are text in practice; surrogateescape keeps any
    # odd byte visible instead of failing the whole snapshot.
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


@attrs.define
class CounterSnapshots:
    """Snapshot-and-reset for the counters matching ``pattern``.

    Use from one task at a time: ``snapshot`` → apply in SQL with the ledger
    ``(plugin, snapshot.id)`` in one transaction → ``commit``; repeat while
    ``snapshot`` returns something (it takes at most ``max_keys`` per call).

    Attributes:
        redis: The shared Redis handle; each call is one thread hop.
        pattern: SCAN MATCH pattern of the counter keys, e.g. ``node:*:traffic``.
        inflight_prefix: Namespace of the in-flight keys; unique per plugin.
        kind: ``"hash"`` (HINCRBY'd fields) or ``"string"`` (INCRBY'd keys).
        scan_count: SCAN COUNT hint per round trip.
    """

    redis: RedisHandle
    pattern: str
    inflight_prefix: str
    kind: Kind = attrs.field(default="hash", validator=attrs.validators.in_(("hash", "string")))
    scan_count: int = 1000
    _cursor: int = attrs.field(init=False, default=0, repr=False)
    _scripts: dict[str, Any] = attrs.field(init=False, repr=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        client = self.redis.client
        self._scripts["snapshot"] = client.register_script(_SNAPSHOT)
        self._scripts["commit"] = client.register_script(_COMMIT)

    # -- key names -----------------------------------------------------------------

    @property
    def current_key(self) -> str:
        return f"{self.inflight_prefix}:current"

    def keyset_key(self, snapshot_id: str) -> str:
        return f"{self.inflight_prefix}:{snapshot_id}:keys"

    def inflight_key(self, snapshot_id: str, key: bytes | str) -> bytes:
        return f"{self.inflight_prefix}:{snapshot_id}:".encode() + _as_bytes(key)

    # -- snapshot ------------------------------------------------------------------

    async def snapshot(self, max_keys: int) -> Snapshot | None:
        """Take up to ``max_keys`` counters out of circulation, or None if there are none.

        A snapshot already in flight is returned instead (``recovered``), so
        a crash between snapshot and commit never strands or re-counts data.
        """
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        return await self.redis.run(self._snapshot, max_keys)

    def _snapshot(self, client: redis_py.Redis, max_keys: int) -> Snapshot | None:
        # Retried only when the script took nothing (see _take); a few tries
        # are plenty, and None just means "nothing this time".
        for _ in range(3):
            in_flight = self._load_current(client)
            if in_flight is not None:
                return in_flight
            keys = self._scan(client, max_keys)
            if not keys:
                return None
            taken = self._take(client, keys)
            if taken is not None:
                return taken
        return None

    def _take(self, client: redis_py.Redis, keys: list[bytes]) -> Snapshot | None:
        """Run the snapshot script on ``keys``; None if it took nothing.

        That is: a replica's snapshot was in flight and got committed before
        we could load it, or every key vanished (expired) since the SCAN.
        """
        snapshot_id = uuid.uuid4().hex
        pairs: list[bytes | str] = []
        for key in keys:
            pairs += [key, self.inflight_key(snapshot_id, key)]
        reply = self._scripts["snapshot"](
            keys=[self.current_key, self.keyset_key(snapshot_id), *pairs],
            args=[snapshot_id, self.kind],
            client=client,
        )
        if reply[0] == 0:
            # In flight already: a replica's, or our own call replayed by
            # redis-py after a lost reply. Either way, that is the snapshot.
            return self._load_current(client)
        taken = reply[1:]
        if not taken:  # every key vanished (expired) since the SCAN
            return None
        raw_keys = tuple(taken[0::2])
        entries = [
            (_text(key), self._values(value))
            for key, value in zip(taken[0::2], taken[1::2], strict=True)
        ]
        return Snapshot(snapshot_id, entries, recovered=False, raw_keys=raw_keys)

    def _scan(self, client: redis_py.Redis, max_keys: int) -> list[bytes]:
        """Up to ``max_keys`` distinct counter keys, resuming where the last scan stopped.

        Resuming (rather than starting at cursor 0 each time) keeps a busy
        bucket that refills between flushes from starving the rest of the
        keyspace. The scan ends at ``max_keys`` or after one full pass.
        """
        found: dict[bytes, None] = {}
        skip = self.inflight_prefix.encode() + b":"
        cursor, wrapped = self._cursor, self._cursor == 0
        while True:
            cursor, batch = client.scan(
                cursor, match=self.pattern, count=self.scan_count, _type=self.kind
            )
            for key in batch:
                if not key.startswith(skip):
                    found[key] = None
            if len(found) >= max_keys:
                break
            if cursor == 0:
                if wrapped:
                    break
                wrapped = True
        self._cursor = cursor
        return list(found)[:max_keys]

    def _load_current(self, client: redis_py.Redis) -> Snapshot | None:
        snapshot_id = client.get(self.current_key)
        if snapshot_id is None:
            return None
        snapshot_id = _text(snapshot_id)
        raw_keys = sorted(client.smembers(self.keyset_key(snapshot_id)))
        with client.pipeline(transaction=False) as pipe:
            for key in raw_keys:
                target = self.inflight_key(snapshot_id, key)
                if self.kind == "hash":
                    pipe.hgetall(target)
                else:
                    pipe.get(target)
            values = pipe.execute()
        entries = [
            (_text(key), self._values(value))
            for key, value in zip(raw_keys, values, strict=True)
            if value  # an empty hash / missing key: nothing to apply
        ]
        return Snapshot(snapshot_id, entries, recovered=True, raw_keys=tuple(raw_keys))

    def _values(self, value: Any) -> Values:
        if self.kind == "string":
            return value
        if isinstance(value, dict):
            return {_text(f): v for f, v in value.items()}
        # From Lua, HGETALL is a flat [field, value, ...] array.
        return {_text(f): v for f, v in zip(value[0::2], value[1::2], strict=True)}

    # -- commit --------------------------------------------------------------------

    async def commit(self, snapshot: Snapshot, dead_letters: Sequence[DeadLetter] = ()) -> bool:
        """Delete the applied snapshot and push its dead letters, atomically.

        Only if it is still the one in flight; False means it was already
        committed (by a replica, or by this very call replayed after a lost
        reply) and nothing was done.
        """
        lists, dl_args = script_args(dead_letters)
        inflight = [self.inflight_key(snapshot.id, key) for key in snapshot.raw_keys]
        script = self._scripts["commit"]
        done = await self.redis.run(
            lambda client: script(
                keys=[self.current_key, self.keyset_key(snapshot.id), *lists, *inflight],
                args=[snapshot.id, len(lists), *dl_args],
                client=client,
            )
        )
        return bool(done)

    # -- gauges --------------------------------------------------------------------

    async def pending(self, cap: int = 100_000) -> int:
        """Counter keys waiting, plus those in flight (for the backlog metric).

        Counts with SCAN, stopping at ``cap`` keys so a huge keyspace costs a
        bounded amount of work; the answer is approximate (SCAN may repeat a key).
        """

        def count(client: redis_py.Redis) -> int:
            skip = self.inflight_prefix.encode() + b":"
            waiting = 0
            for key in client.scan_iter(match=self.pattern, count=self.scan_count, _type=self.kind):
                if not key.startswith(skip):
                    waiting += 1
                    if waiting >= cap:
                        break
            current = client.get(self.current_key)
            if current is not None:
                waiting += int(client.scard(self.keyset_key(_text(current))))
            return waiting

        return await self.redis.run(count)
