"""Dead letters: where bad input goes so it never blocks a queue and never vanishes.

DESIGN.md §3: an item that cannot be parsed or validated is moved, with the
reason, to a Redis list (e.g. ``votes:dead``) instead of being dropped or
retried forever. The usual path is atomic with the batch it came from:
`ReliableQueue.ack` and `CounterSnapshots.commit` push dead letters in the same
Lua script that removes the batch, so an item is either still in its batch or
already quarantined, never both and never neither. `push_dead_letters` is for
the rarer caller that quarantines outside an ack.

Each entry is one JSON document (RPUSHed, so a list reads oldest first)::

    {"id": "5f0c9a1e2b7d4c38", "payload": "<the item as text>", "reason": "...",
     "plugin": "votes", "at": 1700000000.123,
     "at_iso": "2023-11-14T22:13:20.123000+00:00", "source": "votes"}

``source`` (where the item came from) is there only when the plugin knew it;
a source key that is not UTF-8 is stored as ``source_b64`` (its bytes,
base64) and decodes back to the same text with surrogate escapes.
``id`` names the entry for an operator who selects it (`syncd.quarantine`):
random, so two identical rejections stay two entries. Entries written before
ids existed have none; `entry_id` derives theirs from the raw entry, which is
just as stable, since an entry is never rewritten in place.

A payload that is not valid UTF-8 is stored base64-encoded under
``payload_b64`` instead of ``payload``, so arbitrary bytes (binary junk, a
truncated multi-byte character) survive exactly; NUL bytes are valid UTF-8 and
JSON escapes them as ``\\u0000``. So is a payload over 1 MiB whose JSON
text would be larger than its base64 form: an entry is never much more than
a third larger than its payload, so any item up to ~380 MB can be
quarantined within the 512 MB Redis takes in one value.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs

from syncd.keys import slot_key

#: Payloads whose JSON text is larger than this, and larger than their
#: base64 form, are stored base64 (see `DeadLetter._payload_json`).
BASE64_ABOVE = 1 << 20

if TYPE_CHECKING:
    import redis as redis_py

    from syncd.redis import RedisHandle


@attrs.frozen
class DeadLetter:
    """One quarantined item and why.

    Attributes:
        key: The Redis list it is pushed to, e.g. ``"votes:dead"``.
        payload: The item exactly as it was found (raw bytes from Redis, or text).
        reason: Why it was rejected, for the operator reading the list.
        plugin: The plugin that rejected it.
        at: When it was rejected (epoch seconds).
        source: The Redis key the item came from (a queue's list, a
            counter's key), stored so that it can be put back there once
            its cause is fixed; None when there is nowhere to put it back.
        id: Names this entry in its list (see the module docstring).
    """

    key: str
    payload: bytes | str
    reason: str
    plugin: str
    at: float = attrs.Factory(time.time)
    source: str | None = None
    id: str = attrs.Factory(lambda: uuid.uuid4().hex[:16])

    @property
    def payload_bytes(self) -> bytes:
        """The payload as bytes, whichever type it was given as."""
        if isinstance(self.payload, bytes):
            return self.payload
        return self.payload.encode("utf-8", "surrogatepass")

    def encode(self) -> bytes:
        """The JSON document stored in the dead-letter list (UTF-8 bytes).

        Never much larger than the payload: a big payload whose JSON text
        would outgrow its base64 form is stored base64 (see `_payload_json`).
        """
        doc: dict[str, Any] = {
            "id": self.id,
            "reason": self.reason,
            "plugin": self.plugin,
            "at": self.at,
            "at_iso": datetime.fromtimestamp(self.at, UTC).isoformat(),
        }
        if self.source is not None:
            source = _as_text(self.source)
            if source is None:
                # A key that is not UTF-8 (Redis keys are bytes): kept exact,
                # as its bytes, the way the payload is.
                raw = self.source.encode("utf-8", "surrogateescape")
                doc["source_b64"] = base64.b64encode(raw).decode("ascii")
            else:
                doc["source"] = source
        # ensure_ascii=False keeps non-ASCII text readable (and small) in
        # redis-cli; _as_text guaranteed the text encodes as strict UTF-8.
        rest = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        return f"{{{self._payload_json()},{rest[1:]}".encode()

    def _payload_json(self) -> str:
        """``"payload":"<text>"``, or ``"payload_b64":"…"`` for bytes that are
        not UTF-8 and for big payloads that JSON would blow up.

        JSON escapes a control character six-fold (``\\u0001``) and a quote
        two-fold: a 100 MB payload of them became a 600 MB dead letter, past
        the 512 MB Redis accepts in one value, so the ack carrying it failed
        and its batch was retried for ever. Base64 adds a third, whatever the
        bytes. Small payloads stay readable text whatever their escapes.
        """
        text = _as_text(self.payload)
        if text is not None:
            escaped = json.dumps(text, ensure_ascii=False)
            size = len(self.payload_bytes) + len(escaped) - len(text)  # escapes are ASCII
            if size <= BASE64_ABOVE or size <= len(self.payload_bytes) * 4 // 3 + 4:
                return f'"payload":{escaped}'
        return f'"payload_b64":"{base64.b64encode(self.payload_bytes).decode("ascii")}"'

    @classmethod
    def decode(cls, key: str, raw: bytes | str) -> DeadLetter:
        """Parse an entry read back from the list ``key`` (inverse of `encode`).

        A ``payload_b64`` entry comes back with a bytes payload, a text entry
        with a str payload; `payload_bytes` gives the original bytes either way.
        """
        doc = json.loads(raw)
        payload: bytes | str = (
            base64.b64decode(doc["payload_b64"]) if "payload_b64" in doc else doc["payload"]
        )
        source = doc.get("source")
        if "source_b64" in doc:
            source = base64.b64decode(doc["source_b64"]).decode("utf-8", "surrogateescape")
        return cls(key, payload, doc["reason"], doc["plugin"], float(doc["at"]),
                   source=source, id=doc.get("id") or entry_id(raw))


def entry_id(raw: bytes | str) -> str:
    """The id of an entry stored without one: derived from its exact bytes.

    Prefixed ``h`` so it can never collide with a random id (hex only).
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    return "h" + hashlib.sha256(data).hexdigest()[:15]


def _as_text(payload: bytes | str) -> str | None:
    """The payload as text that encodes losslessly to UTF-8, or None.

    None means "store it base64": bytes that are not UTF-8, and str holding
    lone surrogates (which a strict UTF-8 encoder would reject).
    """
    try:
        if isinstance(payload, bytes):
            return payload.decode("utf-8")
        payload.encode("utf-8")
    except UnicodeError:
        return None
    return payload


def script_args(entries: Sequence[DeadLetter]) -> tuple[list[str], list[bytes | int]]:
    """Pack dead letters for a Lua script that pushes them.

    Returns ``(lists, args)``: the distinct target lists (to pass as KEYS, so
    the script declares every key it writes) and a flat ``[index, payload,
    index, payload, ...]`` where ``index`` is 1-based into ``lists``. The
    scripts in `syncd.queue` and `syncd.counters` RPUSH each payload to its
    list in order, inside the same script that acks the batch.
    """
    lists: dict[str, int] = {}
    args: list[bytes | int] = []
    for entry in entries:
        index = lists.setdefault(entry.key, len(lists) + 1)
        args += [index, entry.encode()]
    return list(lists), args


def _push(client: redis_py.Redis, entries: Sequence[DeadLetter]) -> int:
    # MULTI/EXEC so a batch of dead letters lands all or nothing. If the reply
    # is lost and redis-py retries, entries can be pushed twice: dead letters
    # are at-least-once, which is the right side to err on for evidence.
    # On Redis Cluster a transaction holds one slot: one per list's slot.
    from syncd.redis import is_cluster

    groups: dict[Any, list[DeadLetter]] = {}
    for entry in entries:
        slot = client.keyslot(entry.key) if is_cluster(client) else 0  # type: ignore[attr-defined]
        groups.setdefault(slot, []).append(entry)
    for group in groups.values():
        with client.pipeline(transaction=True) as pipe:
            for entry in group:
                pipe.rpush(entry.key, entry.encode())
            pipe.execute()
    return len(entries)


# Push a batch's dead letters to one list at most once, for Redis Cluster,
# where a list outside the batch's slot cannot be written by the batch's own
# ack script. KEYS: the list, its marker for this batch. ARGV: marker TTL (s),
# entries.
_PUSH_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) == false then return 0 end
for first = 2, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, first, math.min(first + 999, #ARGV)))
end
return 1
"""

#: How long a push-once marker lasts: longer than any replay of its batch.
PUSHED_TTL = 86_400


def push_once(client: Any, key: str, batch_id: str, payloads: Sequence[bytes]) -> bool:
    """Append ``payloads`` to the list ``key`` unless they were for ``batch_id``
    already (a marker ``{key}:pushed:<batch_id>`` beside the list says so):
    a replayed ack or commit pushes nothing twice. Runs in a worker thread."""
    script = client.register_script(_PUSH_ONCE)  # only hashes the text
    return bool(script(keys=[key, slot_key(key, "pushed", batch_id)],
                       args=[PUSHED_TTL, *payloads], client=client))


async def push_dead_letters(redis: RedisHandle, entries: Sequence[DeadLetter], *,
                            once: str | None = None) -> int:
    """Quarantine ``entries`` outside an ack, in one round trip; returns how many.

    Prefer passing dead letters to `ReliableQueue.ack` or
    `CounterSnapshots.commit`, which push them atomically with removing the
    batch; this is for items rejected before they were ever part of one.

    ``once`` names what is being rejected (e.g. a job's last attempt): the
    entries are pushed at most once for it, however often the push is
    replayed (a job run again after its replica froze: a marker beside each
    list, kept a day). Returns 0 for a replay.
    """
    if not entries:
        return 0
    if once is None:
        return await redis.run(_push, list(entries))
    by_list: dict[str, list[bytes]] = {}
    for entry in entries:
        by_list.setdefault(entry.key, []).append(entry.encode())

    def push(client: Any) -> int:
        return sum(len(payloads) for key, payloads in by_list.items()
                   if push_once(client, key, once, payloads))

    return await redis.run(push)


async def forget_dead_letters_pushed(redis: RedisHandle, key: str, onces: Sequence[str]) -> None:
    """Let `push_dead_letters` push again under each of ``onces`` (to ``key``):
    for what comes back to be tried anew (a failed job retried from its
    first attempt, whose ``once`` names repeat)."""
    if onces:
        await redis.run(lambda client: client.delete(
            *(slot_key(key, "pushed", once) for once in onces)))


async def count(redis: RedisHandle, key: str) -> int:
    """How many entries the dead-letter list ``key`` holds (for metrics and health)."""
    return await redis.run(lambda client: int(client.llen(key)))


async def read(redis: RedisHandle, key: str, start: int = 0, stop: int = 99) -> list[DeadLetter]:
    """Entries ``start..stop`` (inclusive, oldest first) of ``key``, decoded, for inspection."""
    raw = await redis.run(lambda client: client.lrange(key, start, stop))
    return [DeadLetter.decode(key, item) for item in raw]
