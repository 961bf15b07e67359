"""Atomic snapshot-and-reset of counters that the application keeps incrementing.

The seeds read a counter, write it to SQL, then delete it: every increment
that lands between the read and the delete is lost. Here one Lua script
reads each counter key, copies it into one in-flight hash and deletes it, so
an increment lands either before the script (it is in the snapshot) or after
it (it creates a fresh key that the next snapshot takes): none is lost or
counted twice. The in-flight copy stays in Redis, without a TTL, until the
caller has applied it to SQL under the snapshot id (recorded in its ledger in
the same transaction) and called `CounterSnapshots.commit`. After a crash at
any point, `CounterSnapshots.snapshot` returns the same in-flight snapshot
again, the ledger says whether it was applied, and commit clears it.

Redis keys, for ``inflight_prefix`` (e.g. ``syncd:inflight:traffic``):

``{inflight_prefix}:current``
    The id of the snapshot in flight; at most one at a time.
``{inflight_prefix}:{id}``
    The snapshot itself, a hash of two fields: ``data``, every counter taken
    as one MessagePack array ``[key, value, key, value, ...]`` (a string
    counter's value as is, a hash counter's as its flat HGETALL array), and
    ``n``, how many counters that is. A new key, so it has no TTL even
    though the application's keys do.

One blob per snapshot rather than one in-flight key (or hash field) per
counter keeps Redis' work per counter to a read and its share of one
batched DEL; the script packs the blob once (``cmsgpack``, in C) and hands
that same blob back, which Python unpacks in C too, so commit is one UNLINK
and recovery one read. Measured here for 100,000 hash counters: 0.24 s of
Redis time and 0.34 s end to end, against 0.38 s and 0.50 s with one packed
hash field per counter, and about a quarter of what one RENAMEd in-flight
key each cost (TYPE, RENAME, PERSIST, SADD, HGETALL, then a DEL per key).

The script (and so the snapshot) is atomic: Redis runs it without
interleaving, and persists and replicates its effects as one MULTI/EXEC. So
at any crash the counters taken are either all in their original keys or all
in the in-flight hash, with ``current`` naming it.

Only keys of the configured type are taken (``SCAN ... TYPE``, and the script
skips a key whose type changed since): a key of another type that happens to
match the pattern is not a counter of ours and is left alone rather than
blocking every flush. Bad *values* are the caller's to judge; it passes them
to `CounterSnapshots.commit` as dead letters.

Redis Cluster (``redis+cluster://``): a script may only touch keys of one
hash slot, so there a snapshot takes the counters of **one slot**, and its
in-flight keys are named to live in that slot: ``{<tag>}:{inflight_prefix}:current``
and ``{<tag>}:{inflight_prefix}:{id}``, where ``<tag>`` is a short string
chosen (`slot_tag`) to hash to that slot. SCAN walks every master (one
cursor per master, resumed like the single-node cursor); the keys found are
grouped by slot and the fullest group is taken first, the others wait in
memory for the next snapshots (a key taken since is skipped by the script).
Each snapshot has its own id, ledger entry and SQL transaction, so the
exactly-once chain is the single-node one, slot by slot. Counter keys that
share a hash tag share a slot, so tagging them (``{traffic:7}:node:12``, a
few hundred tags) makes cluster snapshots as large as single-node ones.

Finding every snapshot in flight after a crash: a snapshot's keys live in
its counters' slot, on whichever master holds it, so before the script
runs the slot is recorded in the lane's **registry**, a hash
``{inflight_prefix}:slots`` (slot → ``<id>:<ms>``, written first: a write-
ahead intent). The registry is thus a superset of the slots holding a
snapshot: a crash between it and the script leaves an entry whose slot has
no ``current``, which is dropped once it is a minute old (the script runs
milliseconds after the intent; the age keeps a slow replica's fresh intent
from being dropped under it). Recovery reads the registry, then ``current``
in each slot it names, on whichever master holds the slot now (resharding
moves a snapshot's keys with its slot). Commit clears ``current`` in the
slot, then its registry entry. Dead letters go to their lists (other slots)
before the commit, each list's push at most once per snapshot (a marker
key beside the list, ``{list}:pushed:<id>``, one day).

Several replicas: a replica that finds another's snapshot in flight gets it
too (``recovered``); both may apply it, the ledger lets only one through, and
only one commit removes it. A lease (DESIGN.md §7) avoids the wasted work.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs
import msgpack

from syncd.deadletter import DeadLetter, script_args
from syncd.keys import slot_key
from syncd.redis import is_cluster, node_scan

if TYPE_CHECKING:
    import redis as redis_py

    from syncd.redis import RedisHandle

Kind = Literal["hash", "string"]
Values = dict[str, bytes] | bytes

#: Keys per HSET / DEL / MGET call inside the scripts: Lua's ``unpack`` is
#: limited to a few thousand values (LUAI_MAXCSTACK).
_LUA_CHUNK = 1000

# Move the scanned keys into the snapshot and return it, atomically.
# Keys that vanished or changed type since the SCAN are skipped (a hash read
# with HGETALL under pcall: WRONGTYPE is skipped without a TYPE call; strings
# with MGET, which gives nil for any other type). If a snapshot is already in
# flight (a replayed call, another replica), do nothing: the caller loads it.
# KEYS: current, snapshot hash, then the counter keys.
# ARGV: snapshot id, kind ('hash' | 'string'), chunk size.
# Returns {0} if one is in flight, {1} if nothing was taken, else {1, blob}:
# the MessagePack array [key, value, key, value, ...] also stored as `data`,
# where a hash's value is its flat HGETALL array.
_SNAPSHOT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
local out, gone = {}, {}
local chunk = tonumber(ARGV[3])
local function take(key, value)
  out[#out + 1] = key
  out[#out + 1] = value
  gone[#gone + 1] = key
  if #gone >= chunk then
    redis.call('DEL', unpack(gone))
    gone = {}
  end
end
if ARGV[2] == 'hash' then
  for i = 3, #KEYS do
    local value = redis.pcall('HGETALL', KEYS[i])
    if value.err == nil and #value > 0 then take(KEYS[i], value) end
  end
else
  for first = 3, #KEYS, chunk do
    local last = math.min(first + chunk - 1, #KEYS)
    local values = redis.call('MGET', unpack(KEYS, first, last))
    for i = first, last do
      local value = values[i - first + 1]
      if value then take(KEYS[i], value) end
    end
  end
end
if #gone > 0 then redis.call('DEL', unpack(gone)) end
if #out == 0 then return {1} end
local blob = cmsgpack.pack(out)
redis.call('HSET', KEYS[2], 'data', blob, 'n', #out / 2)
redis.call('SET', KEYS[1], ARGV[1])
return {1, blob}
"""

# Finish a snapshot: only if it is still the one in flight, push its dead
# letters and delete the snapshot hash and the id.
# KEYS: current, snapshot hash, dead-letter lists (ARGV[2] of them).
# ARGV: snapshot id, number of dead-letter lists, [list index, entry]...
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 3, #ARGV, 2 do
  redis.call('RPUSH', KEYS[2 + tonumber(ARGV[i])], ARGV[i + 1])
end
redis.call('UNLINK', KEYS[2])
redis.call('DEL', KEYS[1])
return 1
"""

# Cluster: push one snapshot's dead letters to one list at most once.
# KEYS: the list, its marker for this snapshot. ARGV: marker TTL (s), entries.
_PUSH_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) == false then return 0 end
for first = 2, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, first, math.min(first + 999, #ARGV)))
end
return 1
"""

#: How long a cluster dead-letter push marker lasts: longer than any replay.
_PUSHED_TTL = 86_400

#: A registry entry whose slot holds no snapshot is dropped after this long.
_STALE_INTENT_MS = 60_000

#: Hash slots of a Redis Cluster.
SLOTS = 16384


@functools.cache
def _slot_tags() -> tuple[str, ...]:
    """For each slot, the shortest hex string that hashes to it (0.4 s, once)."""
    from redis.crc import key_slot

    tags: dict[int, str] = {}
    i = 0
    while len(tags) < SLOTS:
        tag = format(i, "x")
        tags.setdefault(key_slot(tag.encode()), tag)
        i += 1
    return tuple(tags[slot] for slot in range(SLOTS))


def slot_tag(slot: int) -> str:
    """A hash tag (``{<it>}``) that puts a key in Cluster slot ``slot``."""
    return _slot_tags()[slot]


def key_slot(key: bytes | str) -> int:
    """The Cluster hash slot of ``key`` (its hash tag's, if it has one)."""
    from redis.crc import key_slot as crc_slot

    return crc_slot(key.encode() if isinstance(key, str) else key)


@attrs.frozen
class Snapshot:
    """Counters taken out of circulation; apply under ``id``, then commit.

    Attributes:
        id: Unique per snapshot and stable across crashes: the ledger key.
        raw: Every counter taken, flat and undecoded, exactly as Redis gave
            it: ``[key, value, key, value, ...]`` (bytes), where a hash
            counter's value is its flat ``[field, value, ...]`` list and a
            string counter's the bytes. `pairs` walks it; a plugin that reads
            100,000 counters a second judges these directly.
        recovered: Found in flight (left over from a crash, or another
            replica's): it may already be applied, so the ledger decides.
        kind: Of the counters: ``"hash"`` or ``"string"``.
        more: Counters are known to be waiting beyond this snapshot although
            it is smaller than asked (on a cluster, where a snapshot holds one
            slot's counters): a flush goes on.
        slot: The Cluster hash slot it lives in (None on single Redis).
    """

    id: str
    raw: list[Any] = attrs.field(repr=lambda raw: f"<{len(raw) // 2} counters>")
    recovered: bool = False
    kind: Kind = "hash"
    more: bool = False
    slot: int | None = None

    def __len__(self) -> int:
        return len(self.raw) // 2

    def pairs(self) -> Iterator[tuple[bytes, Any]]:
        """``(key, value)`` as in `raw`: the fast way through a snapshot."""
        raw = self.raw
        return zip(raw[0::2], raw[1::2], strict=True)

    @functools.cached_property
    def entries(self) -> list[tuple[str, Values]]:
        """``(key, values)``, decoded: the key as text and, for hash counters,
        a field → raw value dict. Values stay unparsed: deciding what is a
        valid counter is the plugin's job."""
        if self.kind == "string":
            return [(_text(key), value) for key, value in self.pairs()]
        return [(_text(key), _fields(value)) for key, value in self.pairs()]


def _text(value: bytes | str) -> str:
    # Key and field names are text in practice; surrogateescape keeps any
    # odd byte visible instead of failing the whole snapshot.
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


#: Decoded field names: hash counters have the same few fields in every key.
_NAMES: dict[bytes, str] = {}


def _fields(flat: list[bytes]) -> dict[str, bytes]:
    """A hash counter's flat HGETALL array as a field → raw value dict."""
    try:  # the usual case: every name seen before, decoded in C
        return dict(zip(map(_NAMES.__getitem__, flat[0::2]), flat[1::2], strict=True))
    except KeyError:
        pass
    for raw in flat[0::2]:
        if raw not in _NAMES and len(_NAMES) < 1000:  # odd names must not grow it for ever
            _NAMES[raw] = _text(raw)
    return {_NAMES.get(raw) or _text(raw): value
            for raw, value in zip(flat[0::2], flat[1::2], strict=True)}


def _current_key(inflight_prefix: str) -> str:
    return f"{inflight_prefix}:current"


def _snapshot_key(inflight_prefix: str, snapshot_id: str) -> str:
    return f"{inflight_prefix}:{snapshot_id}"


def _unpack(blob: bytes) -> list[Any]:
    # raw=True: every string comes back as bytes, as Redis stored it.
    return msgpack.unpackb(blob, raw=True, use_list=True)


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
    # Cluster only: a SCAN cursor per master (by node name), and the keys
    # scanned but not taken yet, by slot.
    _cursors: dict[str, int] = attrs.field(init=False, repr=False, factory=dict)
    _waiting: dict[int, list[bytes]] = attrs.field(init=False, repr=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        client = self.redis.client
        self._scripts["snapshot"] = client.register_script(_SNAPSHOT)
        self._scripts["commit"] = client.register_script(_COMMIT)
        self._scripts["push_once"] = client.register_script(_PUSH_ONCE)

    # -- key names -----------------------------------------------------------------

    @property
    def current_key(self) -> str:
        return _current_key(self.inflight_prefix)

    def snapshot_key(self, snapshot_id: str) -> str:
        """The hash holding snapshot ``snapshot_id`` (its data and count)."""
        return _snapshot_key(self.inflight_prefix, snapshot_id)

    @property
    def registry_key(self) -> str:
        """Cluster: the hash of slots that may hold a snapshot of this lane."""
        return _registry_key(self.inflight_prefix)

    def _slot_prefix(self, slot: int) -> str:
        """Cluster: the in-flight prefix of ``slot``, tagged to live there."""
        return _slot_prefix(self.inflight_prefix, slot)

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
        if is_cluster(client):
            return self._cluster_snapshot(client, max_keys)
        # The script itself refuses to take while a snapshot is in flight and
        # _take then loads that one, so the in-flight check costs a round
        # trip of its own only when there is nothing to take. Retried only
        # when the script took nothing (see _take); a few tries are plenty,
        # and None just means "nothing this time".
        for _ in range(3):
            keys = self._scan(client, max_keys)
            if not keys:
                return self._load_current(client)
            taken = self._take(client, keys)
            if taken is not None:
                return taken
        return None

    def _take(self, client: redis_py.Redis, keys: list[bytes]) -> Snapshot | None:
        """Run the snapshot script on ``keys`` (distinct); None if it took nothing.

        That is: a replica's snapshot was in flight and got committed before
        we could load it, or every key vanished (expired) since the SCAN.
        """
        snapshot_id = uuid.uuid4().hex
        reply = self._scripts["snapshot"](
            keys=[self.current_key, self.snapshot_key(snapshot_id), *keys],
            args=[snapshot_id, self.kind, _LUA_CHUNK],
            client=client,
        )
        if reply[0] == 0:
            # In flight already: a replica's, or our own call replayed by
            # redis-py after a lost reply. Either way, that is the snapshot.
            return self._load_current(client)
        if len(reply) == 1:  # every key vanished (expired) since the SCAN
            return None
        return Snapshot(snapshot_id, _unpack(reply[1]), recovered=False, kind=self.kind)

    # -- cluster: one slot per snapshot -----------------------------------------------

    def _cluster_snapshot(self, client: Any, max_keys: int) -> Snapshot | None:
        """A snapshot of one slot's counters, the one in flight first (see the module doc)."""
        found = self._cluster_load_current(client)
        if found is not None:
            return found
        # Keys scanned earlier may have been taken since (another lane, a
        # replica): the script skips them, and an empty take moves on. The
        # bound keeps one call's work finite; None then just means "not now".
        for _ in range(64):
            if not self._waiting and not self._cluster_scan(client, max_keys):
                return None
            slot = max(self._waiting, key=lambda s: len(self._waiting[s]))
            keys = self._waiting.pop(slot)
            if len(keys) > max_keys:
                self._waiting[slot] = keys[max_keys:]
                keys = keys[:max_keys]
            taken = self._cluster_take(client, slot, keys)
            if taken is not None:
                return taken
        return None

    def _cluster_scan(self, client: Any, max_keys: int) -> int:
        """Fill `_waiting` with up to ``max_keys`` keys from every master; how many.

        One cursor per master, resumed across calls (as `_scan` does on one
        node); the walk ends at ``max_keys`` or once every master was walked
        through to its end.
        """
        skip = self.inflight_prefix.encode() + b":"
        registry = self.registry_key.encode()
        masters = sorted(client.get_primaries(), key=lambda node: node.name)
        known = {node.name for node in masters}
        self._cursors = {name: c for name, c in self._cursors.items() if name in known}
        found: dict[bytes, None] = {}
        for node in masters:
            cursor = self._cursors.get(node.name, 0)
            while len(found) < max_keys:
                cursor, batch = node_scan(client, node, cursor, self.pattern,
                                          self.scan_count, self.kind)
                for key in batch:
                    if (not key.startswith(skip) and not _is_tagged_inflight(key, skip)
                            and key != registry):
                        found[key] = None
                if cursor == 0:
                    break
            self._cursors[node.name] = cursor
            if len(found) >= max_keys:
                break
        for key in found:
            self._waiting.setdefault(key_slot(key), []).append(key)
        return len(found)

    def _cluster_take(self, client: Any, slot: int, keys: list[bytes]) -> Snapshot | None:
        """Run the snapshot script in ``slot``, its intent recorded first."""
        snapshot_id = uuid.uuid4().hex
        prefix = self._slot_prefix(slot)
        client.hset(self.registry_key, str(slot), f"{snapshot_id}:{_now_ms()}")
        reply = self._scripts["snapshot"](
            keys=[_current_key(prefix), _snapshot_key(prefix, snapshot_id), *keys],
            args=[snapshot_id, self.kind, _LUA_CHUNK],
            client=client,
        )
        if reply[0] == 0:  # in flight there already (a replica's): that one
            return self._cluster_load_current(client)
        if len(reply) == 1:
            return None
        return Snapshot(snapshot_id, _unpack(reply[1]), recovered=False, kind=self.kind,
                        more=bool(self._waiting) or any(self._cursors.values()), slot=slot)

    def _registered(self, client: Any) -> list[tuple[int, str, str | None]]:
        """``(slot, registry value, snapshot id in flight there or None)`` per registry entry."""
        entries = client.hgetall(self.registry_key)
        out = []
        for raw_slot, value in sorted(entries.items()):
            slot = int(raw_slot)
            current = client.get(_current_key(self._slot_prefix(slot)))
            out.append((slot, _text(value), None if current is None else _text(current)))
        return out

    def _cluster_load_current(self, client: Any) -> Snapshot | None:
        """The first snapshot in flight in a registered slot; drop stale intents."""
        for slot, value, current in self._registered(client):
            if current is None:
                self._drop_stale_intent(client, slot, value)
                continue
            prefix = self._slot_prefix(slot)
            blob = client.hget(_snapshot_key(prefix, current), "data")
            if blob is None:
                if client.get(_current_key(prefix)) is None:
                    continue  # committed between the two reads
                raise RuntimeError(
                    f"{_current_key(prefix)} names snapshot {current}, but "
                    f"{_snapshot_key(prefix, current)} has no 'data' field: inspect it, "
                    f"apply its counters by hand if it holds any, then delete both keys")
            return Snapshot(current, _unpack(blob), recovered=True, kind=self.kind,
                            more=True, slot=slot)
        return None

    def _drop_stale_intent(self, client: Any, slot: int, value: str) -> None:
        _, _, stamp = value.rpartition(":")
        if stamp.isdigit() and _now_ms() - int(stamp) > _STALE_INTENT_MS:
            self._scripts.setdefault("hdel_if", client.register_script(_HDEL_IF))(
                keys=[self.registry_key], args=[str(slot), value], client=client)

    def _cluster_commit(self, client: Any, snapshot: Snapshot,
                        dead_letters: Sequence[DeadLetter]) -> bool:
        slot = snapshot.slot
        if slot is None:  # loaded by an older caller: find it by its id
            slot = next((s for s, _, cur in self._registered(client) if cur == snapshot.id),
                        None)
            if slot is None:
                return False
        by_list: dict[str, list[bytes]] = {}
        for entry in dead_letters:
            by_list.setdefault(entry.key, []).append(entry.encode())
        for key, payloads in by_list.items():
            self._scripts["push_once"](
                keys=[key, slot_key(key, "pushed", snapshot.id)],
                args=[_PUSHED_TTL, *payloads], client=client)
        prefix = self._slot_prefix(slot)
        done = self._scripts["commit"](
            keys=[_current_key(prefix), _snapshot_key(prefix, snapshot.id)],
            args=[snapshot.id, 0], client=client)
        # The intent goes only if it is still this snapshot's (a replica may
        # have recorded a newer one for the slot since).
        value = client.hget(self.registry_key, str(slot))
        if value is not None and _text(value).startswith(snapshot.id + ":"):
            self._scripts.setdefault("hdel_if", client.register_script(_HDEL_IF))(
                keys=[self.registry_key], args=[str(slot), _text(value)], client=client)
        return bool(done)

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
        """The snapshot in flight, or None (also if it was committed meanwhile)."""
        snapshot_id = client.get(self.current_key)
        if snapshot_id is None:
            return None
        snapshot_id = _text(snapshot_id)
        blob = client.hget(self.snapshot_key(snapshot_id), "data")
        if blob is None:
            if client.get(self.current_key) is None:
                return None  # committed between the two reads: nothing in flight
            # Named as in flight but holding nothing readable: edited by hand,
            # or another format. Taking more would be refused for ever, so
            # say so rather than flush nothing in silence.
            raise RuntimeError(
                f"{self.current_key} names snapshot {snapshot_id}, but "
                f"{self.snapshot_key(snapshot_id)} has no 'data' field: inspect it, "
                f"apply its counters by hand if it holds any, then delete both keys")
        return Snapshot(snapshot_id, _unpack(blob), recovered=True, kind=self.kind)

    # -- commit --------------------------------------------------------------------

    async def commit(self, snapshot: Snapshot, dead_letters: Sequence[DeadLetter] = ()) -> bool:
        """Delete the applied snapshot and push its dead letters, atomically.

        Only if it is still the one in flight; False means it was already
        committed (by a replica, or by this very call replayed after a lost
        reply) and nothing was done.
        """
        if self.redis.cluster:
            return await self.redis.run(self._cluster_commit, snapshot, dead_letters)
        lists, dl_args = script_args(dead_letters)
        script = self._scripts["commit"]
        done = await self.redis.run(
            lambda client: script(
                keys=[self.current_key, self.snapshot_key(snapshot.id), *lists],
                args=[snapshot.id, len(lists), *dl_args],
                client=client,
            )
        )
        return bool(done)

    # -- gauges --------------------------------------------------------------------

    async def pending(
        self, cap: int = 100_000, *, stop: Callable[[], bool] | None = None,
    ) -> int | None:
        """Counter keys waiting, plus those in flight (for the backlog metric).

        Counts with SCAN, stopping at ``cap`` keys so a huge keyspace costs a
        bounded amount of work; the answer is approximate (SCAN may repeat a
        key). ``stop`` is asked between SCAN pages: once it says so the count
        is given up and None returned (a flush that starts walks the keyspace
        itself, and two walks side by side only slow each other).
        """

        def count(client: redis_py.Redis) -> int | None:
            skip = self.inflight_prefix.encode() + b":"
            waiting, cursor = 0, 0
            if is_cluster(client):
                for key in _scan_all(client, self.pattern, self.scan_count, self.kind, stop):
                    if key is None:
                        return None
                    if not key.startswith(skip) and not _is_tagged_inflight(key, skip):
                        waiting += 1
                        if waiting >= cap:
                            break
                return min(waiting, cap) + self.in_flight(client)
            while True:
                cursor, keys = client.scan(
                    cursor, match=self.pattern, count=self.scan_count, _type=self.kind)
                waiting += sum(1 for key in keys if not key.startswith(skip))
                if cursor == 0 or waiting >= cap:
                    break
                if stop is not None and stop():
                    return None
            return min(waiting, cap) + self.in_flight(client)

        return await self.redis.run(count)

    def in_flight(self, client: redis_py.Redis) -> int:
        """Counter keys in the snapshot in flight (0 if none); sync, for a thread."""
        return self.count_in_flight(client, self.inflight_prefix)

    @staticmethod
    def count_in_flight(client: redis_py.Redis, inflight_prefix: str) -> int:
        """`in_flight` for any ``inflight_prefix``, from a plain client (test
        harnesses count what is in flight without building the whole thing)."""
        if is_cluster(client):
            total = 0
            for raw_slot in client.hkeys(_registry_key(inflight_prefix)):
                prefix = _slot_prefix(inflight_prefix, int(raw_slot))
                current = client.get(_current_key(prefix))
                if current is not None:
                    total += int(client.hget(_snapshot_key(prefix, _text(current)), "n") or 0)
            return total
        current = client.get(_current_key(inflight_prefix))
        if current is None:
            return 0
        return int(client.hget(_snapshot_key(inflight_prefix, _text(current)), "n") or 0)

    def has_in_flight(self, client: redis_py.Redis) -> bool:
        """Whether this lane holds a snapshot (sync, for a thread)."""
        if is_cluster(client):
            return any(current is not None for _, _, current in self._registered(client))
        return bool(client.exists(self.current_key))


# Drop a registry entry only if it still has the value we saw.
_HDEL_IF = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


def _registry_key(inflight_prefix: str) -> str:
    return slot_key(inflight_prefix, "slots")


def _slot_prefix(inflight_prefix: str, slot: int) -> str:
    return f"{{{slot_tag(slot)}}}:{inflight_prefix}"


def _is_tagged_inflight(key: bytes, skip: bytes) -> bool:
    """Whether ``key`` is a cluster in-flight key (``{tag}:<prefix>:...``)."""
    if not key.startswith(b"{"):
        return False
    _, sep, rest = key.partition(b"}:")
    return bool(sep) and rest.startswith(skip)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _scan_all(client: Any, match: str, count: int, kind: str,
              stop: Callable[[], bool] | None) -> Iterator[bytes | None]:
    """Every matching key on every master; None (then stop) once ``stop()`` says so."""
    for node in client.get_primaries():
        cursor = 0
        while True:
            cursor, batch = node_scan(client, node, cursor, match, count, kind)
            yield from batch
            if cursor == 0:
                break
            if stop is not None and stop():
                yield None
                return
