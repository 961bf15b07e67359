"""What a snapshot of view counters means, and what a pub/sub message means.

Pure logic, no I/O. Counters (`ViewsJudge`, for the core's
`syncd.CounterFlusher`): each ``vod:views:{id}`` string holds the views
INCR'd since the last flush.

- the id is what ``*`` matches: it must be non-empty UTF-8, else the
  counter is quarantined (``bad_id``);
- the value must be a 64-bit integer as INCRBY keeps it (an application
  that SETs ``"12abc"`` gets it quarantined, ``bad_value``); negative counts
  are corrections and are applied;
- an id with no row, or whose increment the database refuses, is found in
  the SQL transaction and quarantined by the core.

Messages (`parse_updates`): ``{"vodId": "vod_123", "count": 1}``; anything
else is a dead letter with the reason, and never stops the listener.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import orjson

import syncd
from syncd_views.config import ViewsConfig

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# fullmatch: ``$`` would also match before a trailing newline.
_INTEGER = re.compile(rb"-?[0-9]{1,19}")

#: Reason labels for the ``views_dead_lettered_total`` metric (the core adds
#: ``missing_row`` and ``refused``).
BAD_ID, BAD_VALUE = "bad_id", "bad_value"


@attrs.frozen
class ViewsJudge:
    """The counter rules, as the core's `syncd.CounterFlusher` asks for them."""

    config: ViewsConfig
    plugin: str
    #: A VOD's delta is its views.
    units = staticmethod(int)

    def judge(self, pairs: Iterable[tuple[bytes, bytes]]) -> syncd.JudgedCounters:
        judged = syncd.JudgedCounters()
        deltas, sources, letters = judged.deltas, judged.sources, judged.letters
        head, tail = self.config.head.encode(), self.config.tail.encode()
        # SCAN MATCH took only keys of the form head*tail (the pattern has no
        # other glob character), so the id is the slice between them.
        start, stop = len(head), -len(tail) or None
        for key, value in pairs:
            # The usual counter: plain digits (≤ 18 always fit a BIGINT).
            if value.isdigit() and len(value) <= 18:
                views = int(value)
            else:
                views = _integer(value)
                if views is None:
                    letters.append(self._letter(
                        BAD_VALUE, key, value, "value is not a 64-bit integer"))
                    continue
            try:
                vod = key[start:stop].decode()
            except UnicodeDecodeError:
                vod = ""
            if not vod or not (key.startswith(head) and key.endswith(tail)):
                letters.append(self._letter(
                    BAD_ID, key, value, "the key holds no VOD id (empty, or not UTF-8)"))
                continue
            if vod in deltas:  # two keys naming one id cannot happen with one *; kept safe
                deltas[vod] += views
                sources[vod].append((key, value))
            else:
                deltas[vod] = views
                sources[vod] = [(key, value)]
        return judged

    def rows(self, judged: syncd.JudgedCounters) -> list[tuple[Any, ...]]:
        """``(vod id, views)`` in id order (a stable lock order)."""
        deltas = judged.deltas
        ids = sorted(deltas)  # the ids alone: comparing (id, views) tuples costs more
        return list(zip(ids, map(deltas.__getitem__, ids), strict=True))

    def _letter(self, kind: str, key: bytes, value: bytes, reason: str) -> syncd.CounterLetter:
        return syncd.counter_letter(kind, self.config.dead_letter, self.plugin, key, value,
                                    reason)


def restore(letter: syncd.DeadLetter) -> list[syncd.Restore]:
    """How a quarantined counter goes back: its value INCRBY'd onto its key again.

    The inverse of `syncd.counter_letter` for a string counter: the payload
    names the key and its value, added back onto the same key (where the
    application may have counted more meanwhile), so the next flush takes
    it. A value that is not an integer cannot be added to anything. A
    malformed pub/sub message has no counter to go back to: the producer
    must send it again, well-formed.
    """
    try:
        doc = json.loads(letter.payload_bytes)
        key, value = doc["key"], doc["value"]
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("key and value must be text")
    except (ValueError, KeyError, TypeError) as exc:
        raise syncd.NotRequeueable(
            f"not a view counter entry (a malformed update cannot go back): {exc}") from None
    n = _integer(value.encode("utf-8", "surrogateescape"))
    if n is None:
        raise syncd.NotRequeueable(
            f"{value!r} is not a 64-bit integer, so it cannot be added back onto the counter")
    return [syncd.Restore.incrby(key.encode("utf-8", "surrogateescape"), n)]


def _integer(raw: bytes) -> int | None:
    if not _INTEGER.fullmatch(raw):
        return None
    value = int(raw)
    return value if INT64_MIN <= value <= INT64_MAX else None


@attrs.define
class Updates:
    """A read of pub/sub messages sorted: views per VOD, and the malformed ones.

    Attributes:
        counts: VOD id → views to INCRBY (summed over the messages).
        messages: Messages counted.
        letters: The malformed messages, as dead letters.
    """

    counts: dict[str, int] = attrs.Factory(dict)
    messages: int = 0
    letters: list[syncd.DeadLetter] = attrs.Factory(list)


def parse_updates(
    payloads: Sequence[bytes], config: ViewsConfig, plugin: str,
) -> Updates:
    """Sort ``{"vodId", "count"}`` messages (see the module docstring)."""
    updates = Updates()
    counts = updates.counts
    max_count = config.max_count
    loads = orjson.loads  # a third of json.loads' time, the intake's hottest line
    for payload in payloads:
        try:
            message = loads(payload)
        except orjson.JSONDecodeError:
            reason = "not JSON"
        else:
            reason = None
            if type(message) is not dict:
                reason = "not a JSON object"
            else:
                vod, count = message.get("vodId"), message.get("count")
                if type(vod) is not str or not vod:
                    reason = "no vodId (a non-empty string)"
                elif type(count) is not int or not 1 <= count <= max_count:
                    reason = f"count is not an integer between 1 and {max_count}"
                else:
                    counts[vod] = counts.get(vod, 0) + count
                    updates.messages += 1
        if reason is not None:
            updates.letters.append(syncd.DeadLetter(
                config.dead_letter, payload, f"malformed update: {reason}", plugin,
                source=config.channel))
    return updates
