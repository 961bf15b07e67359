"""A reliable list consumer: batches that survive crashes and can be reclaimed.

The user's application LPUSHes items onto a list (``source``); the oldest item
is at the right. Instead of popping items into memory (the seeds' pop-then-
crash loss), a consumer *moves* them into its own processing list, gives the
batch an id, and deletes the batch only after the caller has applied it. The
caller records the id in its SQL ledger in the same transaction as the data,
so a batch that is replayed after a crash (by the same consumer on restart,
or by another one that reclaimed it) is applied at most once, and the
conditional ack makes it leave Redis exactly once.

Redis keys, for ``source`` and ``consumer``:

``{source}``
    The list the application LPUSHes to.
``{source}:processing:{consumer}``
    This consumer's processing list; it holds at most one batch (newest item
    at the left, like the source list).
``{source}:processing:{consumer}:batch``
    The id of that batch. It is set before ``take`` returns, so a list without
    an id was never handed to a caller and never applied.
``{source}:processing:{consumer}:sealed``
    Present once someone reclaimed the batch: from then on nothing is added
    to it, so every replica that applies it under its id applies the same items.
``{source}:consumers``
    Set of every consumer that ever held a batch (registry for reclaim).
``{source}:consumer:{consumer}``
    Heartbeat (PX TTL). ``reclaimed-by:{other}`` while another consumer
    finishes this one's batch.

An ack may also hand the batch on (``forward_to``): its items go to other
lists in the same script that removes it, a durable fan-out with no window
in which an item is in both places or in neither. The messages plugin feeds
one list per writer this way, each consumed by a queue of its own.

Every script is safe to run twice. A command whose reply is lost (the
connection drops) may still have run, and it runs again when redis-py is set
to retry, or when the caller retries after `RedisUnavailable`. So the
scripts check Redis state instead of trusting the caller's view. The fill
script is given the length the caller thinks the list has; if Redis
disagrees, it returns the whole list. The ack only acts if the id still
matches. The claim script treats a claim that is already ours as granted.

Every script gets all the keys it touches in KEYS (none is computed in Lua).
On Redis Cluster a script's keys must share a hash slot, so there every
derived key is tagged with the source (`syncd.derived_key`):
``{votes}:processing:web-1``, ``{votes}:consumers``, ``{votes}:consumer:web-1``
live in the slot of ``votes`` (single-node Redis keeps the untagged names
above). A dead-letter list in another slot (``votes:dead``) is pushed to
before the ack, by a script in that list's slot that pushes a batch's
letters at most once (a marker ``{list}:pushed:<batch id>``, one day);
one that shares the slot (``{votes}:dead``) goes in the ack itself, as on
one node.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

from syncd.deadletter import DeadLetter, push_once, script_args
from syncd.errors import RedisUnavailable
from syncd.keys import derived_key, key_slot
from syncd.redis import confirm_replicated

if TYPE_CHECKING:
    import redis as redis_py

    from syncd.redis import RedisHandle

log = logging.getLogger(__name__)

RECLAIMED_BY = "reclaimed-by:"

# The processing list left over from a crash, if any, with its (maybe new) id.
# KEYS: processing, batch id.  ARGV: id to assign if it has none.
_RECOVER = """
if redis.call('LLEN', KEYS[1]) == 0 then return false end
redis.call('SET', KEYS[2], ARGV[1], 'NX')
return {redis.call('GET', KEYS[2]), redis.call('LRANGE', KEYS[1], 0, -1)}
"""

# Form or top up the batch: give it an id if it has none, then move items
# from the source until the list holds ARGV[2] items (a target, not a count,
# so a replayed call cannot overfill). If the list did not hold ARGV[3] items
# before, the caller's view is stale (a replayed move, a reclaim), and it gets
# the whole list instead of just the items moved now.
# A top-up names the batch it means (ARGV[5]): if that batch was finished
# meanwhile (a reclaimer applied and acked it while we stalled), nothing is
# touched, so fresh items can never be taken under an id the ledger holds.
# KEYS: processing, source, batch id, sealed, registry.
# ARGV: new id, target length, length the caller knows, consumer name,
#       id of the batch being topped up ('' for a new batch).
# Returns {id, sealed 0/1, whole list 0/1, items (newest first if whole)},
# or {'', 1, 0, {}} when the batch being topped up is gone.
_FILL = """
if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[5] then
  return {'', 1, 0, {}}
end
redis.call('SET', KEYS[3], ARGV[1], 'NX')
redis.call('SADD', KEYS[5], ARGV[4])
local before = redis.call('LLEN', KEYS[1])
local sealed = redis.call('EXISTS', KEYS[4])
local moved = {}
local want = tonumber(ARGV[2]) - before
if sealed == 0 and want > 0 then
  moved = redis.call('RPOP', KEYS[2], want) or {}
  -- unpack() is limited by Lua's C stack (8000 values): push in chunks
  for i = 1, #moved, 1000 do
    redis.call('LPUSH', KEYS[1], unpack(moved, i, math.min(i + 999, #moved)))
  end
end
local id = redis.call('GET', KEYS[3])
if before ~= tonumber(ARGV[3]) then
  return {id, sealed, 1, redis.call('LRANGE', KEYS[1], 0, -1)}
end
return {id, sealed, 0, moved}
"""

# `_RECOVER`, else, if the source holds items, `_FILL` from nothing: the
# usual take of a busy queue in one round trip instead of three (recover,
# BLMOVE, fill). Returns false when both lists are empty (then the caller
# blocks on BLMOVE), {1, id, items newest first} for a batch left over, or
# {0, id, sealed, items moved, oldest first}.
# KEYS: processing, source, batch id, sealed, registry.
# ARGV: id to assign if none, target length, consumer name.
_TAKE = """
if redis.call('LLEN', KEYS[1]) > 0 then
  redis.call('SET', KEYS[3], ARGV[1], 'NX')
  return {1, redis.call('GET', KEYS[3]), redis.call('LRANGE', KEYS[1], 0, -1)}
end
if redis.call('LLEN', KEYS[2]) == 0 then return false end
redis.call('SET', KEYS[3], ARGV[1], 'NX')
redis.call('SADD', KEYS[5], ARGV[3])
local sealed = redis.call('EXISTS', KEYS[4])
local moved = {}
if sealed == 0 then
  moved = redis.call('RPOP', KEYS[2], tonumber(ARGV[2])) or {}
  for i = 1, #moved, 1000 do
    redis.call('LPUSH', KEYS[1], unpack(moved, i, math.min(i + 999, #moved)))
  end
end
return {0, redis.call('GET', KEYS[3]), sealed, moved}
"""
# Finish a batch: only if its id is still the one applied, push its dead
# letters and delete it. For a reclaimed batch (ARGV[2] = our reclaim mark),
# also deregister the orphan unless it came back to life meanwhile.
# KEYS: processing, batch id, sealed, registry, heartbeat, dead-letter lists...
# ARGV: batch id, reclaim mark or '', consumer name, [list index, entry]...
_ACK = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
for i = 4, #ARGV, 2 do
  redis.call('RPUSH', KEYS[5 + tonumber(ARGV[i])], ARGV[i + 1])
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
if ARGV[2] ~= '' and redis.call('GET', KEYS[5]) == ARGV[2] then
  redis.call('SREM', KEYS[4], ARGV[3])
  redis.call('DEL', KEYS[5])
end
return 1
"""

# `_ACK`, and in the same step hand items on to other lists (a fan-out): each
# forward list gets every item, LPUSHed oldest first so the list reads like
# a source (oldest at the right) and can be consumed by a ReliableQueue of
# its own. Nothing is forwarded unless the id still matches, so a batch is
# handed on exactly once however often the ack is replayed.
# KEYS: processing, batch id, sealed, registry, heartbeat,
#       forward lists (ARGV[4] of them), dead-letter lists...
# ARGV: batch id, reclaim mark or '', consumer name, number of forward
#       lists, number of items n, the n items, [list index, entry]...
_ACK_FORWARD = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local lists = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
for k = 1, lists do
  -- unpack() is limited by Lua's C stack (8000 values): push in chunks
  for i = 6, 5 + n, 1000 do
    redis.call('LPUSH', KEYS[5 + k], unpack(ARGV, i, math.min(i + 999, 5 + n)))
  end
end
for i = 6 + n, #ARGV, 2 do
  redis.call('RPUSH', KEYS[5 + lists + tonumber(ARGV[i])], ARGV[i + 1])
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
if ARGV[2] ~= '' and redis.call('GET', KEYS[5]) == ARGV[2] then
  redis.call('SREM', KEYS[4], ARGV[3])
  redis.call('DEL', KEYS[5])
end
return 1
"""

# Take over a dead consumer's batch. Its heartbeat must still be absent (or
# already be our claim: a replay); mark it as ours for a TTL so no other live
# consumer reclaims it too, and seal the batch so the orphan, if only stalled,
# cannot add items that we would never apply. An empty list: deregister it.
# KEYS: heartbeat, processing, batch id, sealed, registry.
# ARGV: our reclaim mark, ttl ms, id to assign if none, orphan name.
_CLAIM = """
local beat = redis.call('GET', KEYS[1])
if beat and beat ~= ARGV[1] then return false end
if redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('SREM', KEYS[5], ARGV[4])
  redis.call('DEL', KEYS[3], KEYS[4])
  if beat then redis.call('DEL', KEYS[1]) end
  return false
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[3], ARGV[3], 'NX')
redis.call('SET', KEYS[4], '1')
return {redis.call('GET', KEYS[3]), redis.call('LRANGE', KEYS[2], 0, -1)}
"""

# Deregister on a clean shutdown, but only with nothing in flight: a batch
# left behind must stay visible to reclaim (or to our own restart).
# KEYS: processing, batch id, sealed, registry, heartbeat.  ARGV: consumer name.
_CLOSE = """
if redis.call('LLEN', KEYS[1]) > 0 then return 0 end
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[5])
return 1
"""



@attrs.frozen
class Batch:
    """A batch handed to the caller; apply it under ``id``, then `ReliableQueue.ack` it.

    Attributes:
        id: Assigned when the batch was formed and stable across crashes and
            reclaims: the key of the SQL ledger entry that makes a replay a no-op.
        items: The raw items, oldest first.
        consumer: Whose processing list holds it (another consumer's, for a
            reclaimed batch); `ReliableQueue.ack` works on that list.
        recovered: Left over from a crash or reclaimed: it may have been
            applied already, so the ledger decides.
    """

    id: str
    items: list[bytes]
    consumer: str
    recovered: bool = False

    def __len__(self) -> int:
        return len(self.items)


@attrs.define
class _Keys:
    processing: str
    batch: str
    sealed: str
    heartbeat: str


def _new_id() -> str:
    return uuid.uuid4().hex


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@attrs.define
class ReliableQueue:
    """Consume ``source`` in batches through this consumer's processing list.

    One task per consumer: ``take`` and ``ack`` alternate, and every batch
    taken is acked before the next ``take`` (a ``take`` with an un-acked batch
    in the processing list returns that batch again, ``recovered``). Run
    `serve_heartbeat` alongside, or other replicas will reclaim the batches of
    this consumer as orphans (harmless, thanks to the seal and the ledger, but
    wasted work).

    Attributes:
        redis: The shared Redis handle; every call is one thread hop.
        source: The list the application LPUSHes to.
        consumer: A stable id of this daemon instance (the same after a
            restart, so it finds its own batch left over from a crash).
        heartbeat_ttl: Seconds without a heartbeat after which this consumer
            counts as dead and its batch may be reclaimed.
        block_slice: Longest single BLMOVE (seconds). A cancelled task waits
            for its thread, so this bounds how late cancellation takes effect.
        poll_interval: Pause between empty top-up polls while a batch fills.
    """

    redis: RedisHandle
    source: str
    consumer: str
    heartbeat_ttl: float = 15.0
    block_slice: float = 1.0
    poll_interval: float = 0.005
    _scripts: dict[str, Any] = attrs.field(init=False, repr=False, factory=dict)
    _beat_value: str = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not 0 < self.block_slice <= 5:
            raise ValueError("block_slice must be in (0, 5] seconds")
        client = self.redis.client
        for name, src in [
            ("recover", _RECOVER),
            ("take", _TAKE),
            ("fill", _FILL),
            ("ack", _ACK),
            ("ack_forward", _ACK_FORWARD),
            ("claim", _CLAIM),
            ("close", _CLOSE),
        ]:
            self._scripts[name] = client.register_script(src)
        # Unique per process, so an operator can tell a restart from a replica.
        self._beat_value = f"alive:{uuid.uuid4().hex[:12]}"

    # -- key names -----------------------------------------------------------------

    @property
    def registry_key(self) -> str:
        return self._derive("consumers")

    def _derive(self, *parts: str) -> str:
        return derived_key(self.source, *parts, cluster=self.redis.cluster)

    @property
    def processing_key(self) -> str:
        return self._keys(self.consumer).processing

    def _keys(self, consumer: str) -> _Keys:
        processing = self._derive("processing", consumer)
        return _Keys(
            processing=processing,
            batch=f"{processing}:batch",
            sealed=f"{processing}:sealed",
            heartbeat=self._derive("consumer", consumer),
        )

    def _finish_keys(self, keys: _Keys) -> list[str]:
        """KEYS of the scripts that finish a consumer's batch (ack, close), in their order."""
        return [keys.processing, keys.batch, keys.sealed, self.registry_key, keys.heartbeat]

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.heartbeat_ttl * 1000))

    # -- taking a batch ------------------------------------------------------------

    async def take(self, max_items: int, max_wait: float, block: float) -> Batch | None:
        """The next batch, or None if nothing arrived within ``block`` seconds.

        A batch left in the processing list (a crash, or a cancelled take) is
        returned first, as is, with ``recovered=True``. Otherwise it waits for
        one item (BLMOVE in slices of `block_slice`), then keeps moving items
        until ``max_items`` or until ``max_wait`` seconds have passed since the
        first one. Cancelling it loses nothing: what was moved is in the
        processing list under an id, and the next take returns it. (If redis-py
        is set to retry and a BLMOVE reply is lost, the retry moves one more
        item: the batch can then exceed ``max_items`` by that item.)
        """
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        deadline = trio.current_time() + max(block, 0.0)
        while True:
            wait = min(self.block_slice, deadline - trio.current_time())
            found = await self.redis.run(self._take_first, max_items, wait)
            if found is not None:
                break
            if trio.current_time() >= deadline:
                return None
        batch_id, items, sealed, recovered = found
        if recovered:
            await self._confirm_replicated(self.consumer)
            return Batch(batch_id, items, self.consumer, recovered=True)
        closes = trio.current_time() + max_wait
        while len(items) < max_items and not sealed:
            remaining = closes - trio.current_time()
            if remaining <= 0:
                break
            topped_id, more, sealed, whole = await self.redis.run(
                self._fill, batch_id, max_items, len(items), batch_id
            )
            if not topped_id:
                # Finished by another consumer: what we hold was in it.
                break
            batch_id = topped_id
            if whole:
                items = more
            elif more:
                items.extend(more)
            else:
                await trio.sleep(min(self.poll_interval, remaining))
        await self._confirm_replicated(self.consumer)
        # sealed: another consumer reclaimed this batch while we were stalled;
        # it still goes to the caller (same id, so the ledger dedups).
        return Batch(batch_id, items, self.consumer, recovered=bool(sealed))

    def _take_first(
        self, client: redis_py.Redis, max_items: int, wait: float
    ) -> tuple[str, list[bytes], int, bool] | None:
        """In the worker thread: recover, else take what is there, else BLMOVE
        one item and fill the batch."""
        keys = self._keys(self.consumer)
        found = self._scripts["take"](
            keys=[keys.processing, self.source, keys.batch, keys.sealed, self.registry_key],
            args=[_new_id(), max_items, self.consumer], client=client,
        )
        if found:
            if int(found[0]):
                return _text(found[1]), found[2][::-1], 1, True
            _, batch_id, sealed, moved = found
            if moved:
                return _text(batch_id), list(moved), int(sealed), False
            # A seal left on an empty list moved nothing: the old way below.
        # BLMOVE takes its timeout in ms and reads 0 ms as "block forever", so
        # a sliver of time left is a non-blocking LMOVE instead.
        if wait >= 0.01:
            first = client.blmove(self.source, keys.processing, wait, "RIGHT", "LEFT")
        else:
            first = client.lmove(self.source, keys.processing, "RIGHT", "LEFT")
        if first is None:
            return None
        batch_id, more, sealed, whole = self._fill(client, _new_id(), max_items, 1)
        items = more if whole else [first, *more]
        return batch_id, items, sealed, False

    def _fill(
        self, client: redis_py.Redis, batch_id: str, target: int, known: int,
        topping_up: str = "",
    ) -> tuple[str, list[bytes], int, bool]:
        keys = self._keys(self.consumer)
        new_id, sealed, whole, items = self._scripts["fill"](
            keys=[keys.processing, self.source, keys.batch, keys.sealed, self.registry_key],
            args=[batch_id, target, known, self.consumer, topping_up],
            client=client,
        )
        if whole:
            items = items[::-1]  # the list is newest first
        return _text(new_id), list(items), int(sealed), bool(whole)

    # -- finishing a batch ---------------------------------------------------------

    async def ack(
        self,
        batch: Batch,
        dead_letters: Sequence[DeadLetter] = (),
        *,
        forward_to: Sequence[str] = (),
        forward: Sequence[bytes] | None = None,
    ) -> bool:
        """Remove ``batch`` from Redis and push its dead letters, atomically.

        Only if its id is still current: False means it was already finished
        (by another consumer that reclaimed it, by our own restart, or by this
        very call when redis-py replayed it after a lost reply) and nothing was
        done. For a reclaimed batch, the orphan is also deregistered unless it
        has come back meanwhile.

        ``forward_to`` hands the batch on in the same step: every list named
        there receives ``forward`` (default: the batch's own items), oldest
        first, LPUSHed the way an application feeds a source list, so each
        can be consumed by a `ReliableQueue` of its own. That is a durable
        fan-out: the items are in every forward list or still in this batch,
        never both and never neither, and a replayed ack forwards nothing
        twice. (On Redis Cluster, the forward lists must share the
        processing list's hash slot: give the source a hash tag and derive
        them with `syncd.slot_key`.)
        """
        keys = self._keys(batch.consumer)
        mark = "" if batch.consumer == self.consumer else RECLAIMED_BY + self.consumer
        if self.redis.cluster:
            dead_letters = await self._push_elsewhere(batch, dead_letters)
        lists, dl_args = script_args(dead_letters)
        if forward_to:
            items = list(batch.items if forward is None else forward)
            targets = list(dict.fromkeys(forward_to))
            script = self._scripts["ack_forward"]
            done = await self.redis.run(
                lambda client: script(
                    keys=[*self._finish_keys(keys), *targets, *lists],
                    args=[batch.id, mark, batch.consumer, len(targets), len(items),
                          *items, *dl_args],
                    client=client,
                )
            )
            return bool(done)
        if forward is not None:
            raise ValueError("forward items given without forward_to lists")
        script = self._scripts["ack"]
        done = await self.redis.run(
            lambda client: script(
                keys=[*self._finish_keys(keys), *lists],
                args=[batch.id, mark, batch.consumer, *dl_args],
                client=client,
            )
        )
        return bool(done)

    async def _push_elsewhere(
        self, batch: Batch, dead_letters: Sequence[DeadLetter],
    ) -> list[DeadLetter]:
        """Cluster: push the letters bound for lists outside the source's slot
        (each list at most once per batch); return those the ack pushes itself."""
        home = key_slot(self.source)
        same, elsewhere = [], {}
        for letter in dead_letters:
            if key_slot(letter.key) == home:
                same.append(letter)
            else:
                elsewhere.setdefault(letter.key, []).append(letter.encode())
        if elsewhere:

            def push(client: redis_py.Redis) -> None:
                # Only if the batch is still ours to finish: a batch another
                # consumer finished must not gain letters now.
                if client.get(self._keys(batch.consumer).batch) != batch.id.encode():
                    return
                for key, payloads in elsewhere.items():
                    push_once(client, key, batch.id, payloads)

            await self.redis.run(push)
        return same

    # -- liveness and reclaim ------------------------------------------------------

    async def heartbeat(self) -> None:
        """Say "alive" for `heartbeat_ttl` seconds and (re)join the registry."""
        keys = self._keys(self.consumer)

        def beat(client: redis_py.Redis) -> None:
            with client.pipeline(transaction=False) as pipe:
                pipe.set(keys.heartbeat, self._beat_value, px=self._ttl_ms)
                pipe.sadd(self.registry_key, self.consumer)
                pipe.execute()

        await self.redis.run(beat)

    async def serve_heartbeat(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Beat every ``heartbeat_ttl / 3`` seconds until cancelled.

        The first beat must succeed (so a consumer is registered before it
        takes anything, and start-up fails loudly if Redis is away); later
        failures are logged and retried, since the consumer's own Redis calls
        report the outage.
        """
        await self.heartbeat()
        task_status.started()
        while True:
            await trio.sleep(self.heartbeat_ttl / 3)
            try:
                await self.heartbeat()
            except RedisUnavailable as exc:
                log.warning("heartbeat for %s/%s failed: %s", self.source, self.consumer, exc)

    async def orphans(self) -> list[str]:
        """Registered consumers, other than this one, whose heartbeat has expired."""

        def find(client: redis_py.Redis) -> list[str]:
            members = sorted(_text(m) for m in client.smembers(self.registry_key))
            members = [m for m in members if m != self.consumer]
            if not members:
                return []
            with client.pipeline(transaction=False) as pipe:
                for member in members:
                    pipe.exists(self._keys(member).heartbeat)
                alive = pipe.execute()
            return [m for m, a in zip(members, alive, strict=True) if not a]

        return await self.redis.run(find)

    async def claim_orphan(self, consumer: str) -> Batch | None:
        """Take over the batch of the dead ``consumer``, or None if there is nothing to take.

        None also when it turns out to be alive (its heartbeat is back) or
        another consumer claimed it first. The batch keeps the orphan's id and
        lists (``batch.consumer`` is the orphan), so apply it under the ledger
        as usual and `ack` it: the orphan is then deregistered. The claim
        lasts `heartbeat_ttl`; a slower apply lets another consumer claim it
        too, which costs work but never a double apply.
        """
        if consumer == self.consumer:
            raise ValueError("a consumer cannot claim its own batch; take() recovers it")
        keys = self._keys(consumer)
        script = self._scripts["claim"]
        found = await self.redis.run(
            lambda client: script(
                keys=[
                    keys.heartbeat,
                    keys.processing,
                    keys.batch,
                    keys.sealed,
                    self.registry_key,
                ],
                args=[RECLAIMED_BY + self.consumer, self._ttl_ms, _new_id(), consumer],
                client=client,
            )
        )
        if not found:
            return None
        # The orphan may have died before its take reached a replica.
        await self._confirm_replicated(consumer)
        return Batch(_text(found[0]), list(found[1])[::-1], consumer, recovered=True)

    async def _confirm_replicated(self, consumer: str) -> None:
        """On a cluster: the take on a replica before the caller applies it
        (`syncd.redis.confirm_replicated`: a failover could undo it)."""
        if self.redis.cluster:
            await self.redis.run(confirm_replicated, [self._keys(consumer).processing])

    async def close(self) -> bool:
        """Deregister on a clean shutdown; False (and stay registered) if a batch is in flight."""
        keys = self._keys(self.consumer)
        script = self._scripts["close"]
        done = await self.redis.run(
            lambda client: script(
                keys=self._finish_keys(keys),
                args=[self.consumer],
                client=client,
            )
        )
        return bool(done)

    # -- gauges --------------------------------------------------------------------

    async def length(self) -> int:
        """Items waiting in the source list (the backlog)."""
        return await self.redis.run(lambda client: int(client.llen(self.source)))

    async def processing_length(self) -> int:
        """Items in this consumer's processing list (the batch in flight)."""
        key = self.processing_key
        return await self.redis.run(lambda client: int(client.llen(key)))
