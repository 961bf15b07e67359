"""Putting dead letters back where they came from, each exactly once.

A plugin knows where its items came from and how they go back (a vote onto
its queue, a node's bytes back onto its counter hash); the core knows how to
do it without losing or doubling anything. So a plugin maps a dead letter to
a few `Restore` operations from a small vocabulary, through the
``syncd_dead_letter_restore`` hook, and the core runs them in one Lua script
together with removing the entry from its dead-letter list. Redis runs a
script without interleaving and persists and replicates its effects as one
unit, so at any crash, ``kill -9`` included, each item is either still a dead
letter or back at its source: never both, never neither.

The vocabulary (a small one, so that the script can check every operation
before it writes anything: Redis does not roll a script back):

==========  ==========================  =====================================
operation   writes                      use
==========  ==========================  =====================================
rpush       ``RPUSH key value``         a queue item, at the end consumers
                                        take first (syncd's queues take from
                                        the right)
lpush       ``LPUSH key value``         a queue item, at the producers' end
incrby      ``INCRBY key n``            a string counter's value (views)
hincrby     ``HINCRBY key field n``     a hash counter's field (traffic)
hset        ``HSET key field value``    a field restored as it was
zadd        ``ZADD key score member``   a sorted-set member (scheduled jobs)
==========  ==========================  =====================================

Before an item's first write, the script checks that its entry is still in
the list (else it was requeued or purged meanwhile: ``gone``) and that every
operation will succeed: the key has the right type, a counter holds an
integer and the sum stays well inside 64 bits. If one would fail, the item is
*refused* with the reason and stays a dead letter, untouched. Only then does
it remove the entry and write. A replayed script (a reply lost, redis-py
retrying) finds the entry gone and does nothing.

Redis Cluster runs a script only if all its keys share one hash slot. Items
whose keys (the dead-letter list and everything the item restores) share the
dead-letter list's slot are requeued many to a script; on a single Redis any
other item gets a script of its own, atomic on its own. On a cluster such an
item is refused with the reason (it stays a dead letter): requeueing it
needs its source and the dead-letter list named with one hash tag
(``{votes}``, ``{votes}:dead``).

Scripts are sent ``ROUND_TRIP_ITEMS`` items per pipeline, one thread hop
each; ``crash_point(plugin, "requeue_round_trip")`` sits between two round
trips for the tests that kill a requeue in the middle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
from redis.crc import key_slot

from syncd.faults import crash_point
from syncd.redis import pipeline_script

if TYPE_CHECKING:
    import redis as redis_py

    from syncd.redis import RedisHandle

__all__ = ["GONE", "REQUEUED", "NotRequeueable", "Restore"]

#: Outcomes of one item (a refusal is its reason, a str).
REQUEUED, GONE = "requeued", "gone"
#: Items per pipeline of scripts: one thread hop, one round trip.
ROUND_TRIP_ITEMS = 200
#: Items per script when they share a slot (Lua's ARGV stays small).
SCRIPT_ITEMS = 100
INT64 = 2**63

_ARITY = {"rpush": 1, "lpush": 1, "incrby": 1, "hincrby": 2, "hset": 2, "zadd": 2}
_KIND = {"rpush": "list", "lpush": "list", "incrby": "string", "hincrby": "hash",
         "hset": "hash", "zadd": "zset"}

Scalar = bytes | str | int | float


class NotRequeueable(Exception):
    """Raised by ``syncd_dead_letter_restore``: this item cannot go back; ``str()`` says why.

    The item stays a dead letter; the operator sees the reason and may purge it.
    """


@attrs.frozen
class Restore:
    """One write that puts (part of) a dead letter back; see the module docstring.

    Build them with the named constructors (``Restore.rpush(queue, payload)``,
    ``Restore.hincrby(key, "upload", 512)``, ...), which check the arguments.

    Attributes:
        op: The operation's name (``rpush``, ``lpush``, ``incrby``,
            ``hincrby``, ``hset``, ``zadd``).
        key: The Redis key it writes.
        args: Its arguments after the key, as Redis takes them.
    """

    op: str
    key: bytes | str
    args: tuple[Scalar, ...]

    OPS: ClassVar[frozenset[str]] = frozenset(_ARITY)

    def __attrs_post_init__(self) -> None:
        if self.op not in _ARITY:
            raise ValueError(f"unknown restore operation {self.op!r}; one of {sorted(_ARITY)}")
        if len(self.args) != _ARITY[self.op]:
            raise ValueError(f"{self.op} takes {_ARITY[self.op]} argument(s) after the key")
        if not self.key:
            raise ValueError(f"{self.op}: empty key")
        if self.op in ("incrby", "hincrby"):
            n = self.args[-1]
            if not isinstance(n, int) or isinstance(n, bool) or not -INT64 <= n < INT64:
                raise ValueError(f"{self.op}: the increment must be a 64-bit integer, got {n!r}")
        if self.op == "zadd":
            score = self.args[0]
            if not isinstance(score, int | float) or not math.isfinite(score):
                raise ValueError(f"zadd: the score must be a finite number, got {score!r}")

    @classmethod
    def rpush(cls, key: bytes | str, value: bytes | str) -> Restore:
        """Back onto a queue at the end syncd's consumers take next."""
        return cls("rpush", key, (value,))

    @classmethod
    def lpush(cls, key: bytes | str, value: bytes | str) -> Restore:
        """Back onto a queue at the producers' end (taken after what waits)."""
        return cls("lpush", key, (value,))

    @classmethod
    def incrby(cls, key: bytes | str, n: int) -> Restore:
        """Add ``n`` back onto a string counter."""
        return cls("incrby", key, (n,))

    @classmethod
    def hincrby(cls, key: bytes | str, field: bytes | str, n: int) -> Restore:
        """Add ``n`` back onto a hash counter's field."""
        return cls("hincrby", key, (field, n))

    @classmethod
    def hset(cls, key: bytes | str, field: bytes | str, value: bytes | str) -> Restore:
        """Set a hash field back to what it was."""
        return cls("hset", key, (field, value))

    @classmethod
    def zadd(cls, key: bytes | str, score: float, member: bytes | str) -> Restore:
        """Put a member back into a sorted set with its score."""
        return cls("zadd", key, (score, member))

    @property
    def key_bytes(self) -> bytes:
        return _bytes(self.key)

    def describe(self) -> str:
        """One line for people: ``HINCRBY node:7:traffic upload 512``."""
        parts = [self.op.upper(), _text(self.key_bytes)]
        parts += [_text(_bytes(a)) if isinstance(a, bytes | str) else repr(a) for a in self.args]
        line = " ".join(parts)
        return line if len(line) <= 200 else line[:197] + "..."


def _bytes(value: Scalar) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return repr(value).encode() if isinstance(value, float) else str(value).encode()


def _text(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


def normalize(ops: Sequence[Restore], dead_list: str) -> list[Restore]:
    """Check one item's operations together; sum increments of one counter.

    Raises `NotRequeueable` for what the script could not do safely: no
    operation at all (that would be a purge), a write into the dead-letter
    list itself, or one key used as two types.
    """
    if not ops:
        raise NotRequeueable("the plugin gave no operation to put it back")
    kinds: dict[bytes, str] = {}
    merged: dict[tuple[str, bytes, bytes], int] = {}
    out: list[Restore] = []
    dead = dead_list.encode()
    for op in ops:
        if not isinstance(op, Restore):
            raise NotRequeueable(f"the plugin's restore returned {op!r}, not a syncd.Restore")
        key = op.key_bytes
        if key == dead:
            raise NotRequeueable("the plugin would put it back into its own dead-letter list")
        kind = _KIND[op.op]
        if kinds.setdefault(key, kind) != kind:
            raise NotRequeueable(f"the plugin writes {_text(key)} as two types")
        if op.op in ("incrby", "hincrby"):
            field = _bytes(op.args[0]) if op.op == "hincrby" else b""
            slot = (op.op, key, field)
            if slot in merged:
                merged[slot] += int(op.args[-1])  # type: ignore[arg-type]
                continue
            merged[slot] = int(op.args[-1])  # type: ignore[arg-type]
        out.append(op)
    for index, op in enumerate(out):
        if op.op in ("incrby", "hincrby"):
            field = _bytes(op.args[0]) if op.op == "hincrby" else b""
            total = merged[(op.op, op.key_bytes, field)]
            if not -INT64 <= total < INT64:
                raise NotRequeueable(f"the increments of {_text(op.key_bytes)} overflow 64 bits")
            out[index] = attrs.evolve(op, args=(*op.args[:-1], total))
    return out


# Requeue items: for each, if its entry is still in the dead-letter list and
# every operation will succeed, remove the entry and write; all checks come
# before the first write, since Redis does not roll a script back.
# KEYS: the dead-letter list, then every key an operation writes.
# ARGV, per item: entry, number of operations, then per operation: name,
#   index into KEYS, first argument, second argument ('' if none).
# Returns, per item: 1 requeued, 0 gone, or the reason it was refused.
_REQUEUE = """
local dead = KEYS[1]
local t = redis.call('TYPE', dead).ok
if t ~= 'list' and t ~= 'none' then
  return redis.error_reply(dead .. ' is a ' .. t .. ', not a dead-letter list')
end
local KIND = {rpush='list', lpush='list', incrby='string', hincrby='hash',
              hset='hash', zadd='zset'}
local function integer(v)
  if not v then return 0 end
  if v ~= '0' and (#v > 20 or not string.match(v, '^%-?[1-9]%d*$')) then return nil end
  return tonumber(v)
end
local function refusal(op, key, a1, a2)
  local want = KIND[op]
  if not want then return 'unknown restore operation ' .. op end
  local kind = redis.call('TYPE', key).ok
  if kind ~= 'none' and kind ~= want then
    return key .. ' is a ' .. kind .. ', not a ' .. want
  end
  local current, n
  if op == 'incrby' then
    current, n = integer(redis.call('GET', key)), tonumber(a1)
  elseif op == 'hincrby' then
    current, n = integer(redis.call('HGET', key, a1)), tonumber(a2)
  else
    return false
  end
  if current == nil then return key .. ' does not hold an integer' end
  -- Well inside 64 bits: Lua numbers are doubles, so stay clear of the edge.
  if math.abs(current) + math.abs(n) >= 9.2e18 then
    return 'adding to ' .. key .. ' would overflow 64 bits'
  end
  return false
end
local results, i = {}, 1
while i <= #ARGV do
  local entry, count = ARGV[i], tonumber(ARGV[i + 1])
  local ops = {}
  i = i + 2
  for j = 1, count do
    ops[j] = {ARGV[i], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3]}
    i = i + 4
  end
  local result = 0
  local pos = redis.call('LPOS', dead, entry)
  if pos then
    for j = 1, count do
      local why = refusal(ops[j][1], ops[j][2], ops[j][3], ops[j][4])
      if why then result = why break end
    end
    if result == 0 then
      if pos == 0 then redis.call('LPOP', dead) else redis.call('LREM', dead, 1, entry) end
      for j = 1, count do
        local op, key, a1, a2 = ops[j][1], ops[j][2], ops[j][3], ops[j][4]
        if op == 'rpush' then redis.call('RPUSH', key, a1)
        elseif op == 'lpush' then redis.call('LPUSH', key, a1)
        elseif op == 'incrby' then redis.call('INCRBY', key, a1)
        elseif op == 'hincrby' then redis.call('HINCRBY', key, a1, a2)
        elseif op == 'hset' then redis.call('HSET', key, a1, a2)
        elseif op == 'zadd' then redis.call('ZADD', key, a1, a2)
        end
      end
      result = 1
    end
  end
  results[#results + 1] = result
end
return results
"""

# Remove the given entries (one occurrence each); returns how many were there.
# KEYS: the dead-letter list.  ARGV: entries.
_REMOVE = """
local removed = 0
for i = 1, #ARGV do
  local pos = redis.call('LPOS', KEYS[1], ARGV[i])
  if pos == 0 then
    redis.call('LPOP', KEYS[1])
    removed = removed + 1
  elseif pos then
    removed = removed + redis.call('LREM', KEYS[1], 1, ARGV[i])
  end
end
return removed
"""

# Remove every entry; returns how many there were.  KEYS: the dead-letter list.
_REMOVE_ALL = """
local n = redis.call('LLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return n
"""


@attrs.frozen
class _Script:
    """One script call: its keys and arguments, and how many items it carries."""

    keys: list[bytes]
    args: list[Scalar]
    items: int


def cross_slot_reason(dead_list: str, ops: Sequence[Restore]) -> str:
    """Why an item cannot be requeued on Redis Cluster: its keys are in other slots."""
    keys = sorted({_text(op.key_bytes) for op in ops})
    return (f"on Redis Cluster, {dead_list} and {', '.join(keys)} must share a hash slot "
            f"to requeue atomically: name them with one hash tag (e.g. {{votes}} and "
            f"{{votes}}:dead)")


def plan(dead_list: str, items: Sequence[tuple[bytes, Sequence[Restore]]]) -> list[_Script]:
    """Pack items into script calls: many to a script while they share the
    dead-letter list's Cluster slot, else one each (see the module docstring)."""
    dead = dead_list.encode()
    home = key_slot(dead)
    scripts: list[_Script] = []
    run: list[tuple[bytes, Sequence[Restore]]] = []

    def close_run() -> None:
        if run:
            scripts.append(_pack(dead, run))
            run.clear()

    for entry, ops in items:
        if all(key_slot(op.key_bytes) == home for op in ops):
            run.append((entry, ops))
            if len(run) >= SCRIPT_ITEMS:
                close_run()
        else:
            close_run()
            scripts.append(_pack(dead, [(entry, ops)]))
    close_run()
    return scripts


def _pack(dead: bytes, items: Sequence[tuple[bytes, Sequence[Restore]]]) -> _Script:
    keys: dict[bytes, int] = {dead: 1}
    args: list[Scalar] = []
    for entry, ops in items:
        args += [entry, len(ops)]
        for op in ops:
            index = keys.setdefault(op.key_bytes, len(keys) + 1)
            rest = [_bytes(a) for a in op.args] + [b""] * (2 - len(op.args))
            args += [op.op, index, *rest]
    return _Script(list(keys), args, len(items))


async def requeue_entries(
    redis: RedisHandle,
    plugin: str,
    dead_list: str,
    items: Sequence[tuple[bytes, Sequence[Restore]]],
    *,
    round_trip_items: int = ROUND_TRIP_ITEMS,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Requeue ``(entry, operations)`` pairs of ``dead_list``; an outcome per item.

    Each outcome is `REQUEUED`, `GONE` or the reason the item was refused.
    ``operations`` must have passed `normalize`.
    """
    if redis.cluster:
        # A script on a cluster holds one slot, and taking the entry out of
        # the list must be atomic with writing its item back: an item whose
        # keys live elsewhere is refused (and stays) rather than risked.
        home = key_slot(dead_list.encode())
        apart = {i: cross_slot_reason(dead_list, ops) for i, (_, ops) in enumerate(items)
                 if any(key_slot(op.key_bytes) != home for op in ops)}
        if apart:
            rest = [item for i, item in enumerate(items) if i not in apart]
            done = iter(await requeue_entries(redis, plugin, dead_list, rest,
                                              round_trip_items=round_trip_items,
                                              progress=progress) if rest else [])
            return [apart[i] if i in apart else next(done) for i in range(len(items))]
    script = redis.client.register_script(_REQUEUE)
    outcomes: list[str] = []
    trip: list[_Script] = []
    pending = 0

    async def send() -> None:
        nonlocal pending
        replies = await redis.run(_pipeline, script, list(trip))
        for reply in replies:
            outcomes.extend(_outcome(r) for r in reply)
        trip.clear()
        pending = 0
        if progress is not None:
            progress(len(outcomes))
        crash_point(plugin, "requeue_round_trip")

    for call in plan(dead_list, items):
        trip.append(call)
        pending += call.items
        if pending >= round_trip_items:
            await send()
    if trip:
        await send()
    return outcomes


def _pipeline(client: redis_py.Redis, script: Any, calls: list[_Script]) -> list[Any]:
    # Not a transaction: each script is atomic on its own, and a pipeline
    # only saves round trips (a cluster client splits it by node).
    with client.pipeline(transaction=False) as pipe:
        for call in calls:
            pipeline_script(pipe, script, call.keys, call.args)
        return pipe.execute()


def _outcome(reply: Any) -> str:
    if reply == 1:
        return REQUEUED
    if reply == 0:
        return GONE
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


async def remove_entries(redis: RedisHandle, dead_list: str, entries: Sequence[bytes]) -> int:
    """Remove one occurrence of each of ``entries``; how many were still there."""
    script = redis.client.register_script(_REMOVE)

    def remove(client: redis_py.Redis) -> int:
        removed = 0
        for start in range(0, len(entries), SCRIPT_ITEMS):
            chunk = list(entries[start:start + SCRIPT_ITEMS])
            removed += int(script(keys=[dead_list], args=chunk, client=client))
        return removed

    return await redis.run(remove) if entries else 0


async def remove_all(redis: RedisHandle, dead_list: str) -> int:
    """Empty ``dead_list``; how many entries it held."""
    script = redis.client.register_script(_REMOVE_ALL)
    return int(await redis.run(lambda client: script(keys=[dead_list], client=client)))
