"""A plugin's dead letters for operators: browse, requeue, purge, count.

One `Quarantine` per plugin, over the dead-letter list(s) the plugin names
(the ``syncd_dead_letter_lists`` hook, else its config's ``dead_letter``).
The control plane, the CLI and the daemon's gauges all go through it, and it
needs nothing but Redis and the plugin's config: ``syncd dead-letters`` works
while the daemon is stopped.

Every read is bounded: a page reads ``offset + limit`` entries from the
newest end of each list, the reasons are counted over the newest
`REASON_SCAN` entries, the gauges read one entry per list. Requeue and purge
walk a list page by page and stop at what it held when they began, so items
that fail again while a long requeue runs are not chased for ever.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from syncd.deadletter import DeadLetter, entry_id
from syncd.restore import (
    GONE,
    REQUEUED,
    NotRequeueable,
    Restore,
    normalize,
    remove_all,
    remove_entries,
    requeue_entries,
)

if TYPE_CHECKING:
    import redis as redis_py

    from syncd.redis import RedisHandle

#: Entries read per LRANGE while walking a list.
PAGE = 500
#: Largest page the API hands out.
MAX_LIMIT = 500
#: Newest entries counted when grouping reasons.
REASON_SCAN = 10_000
#: Refusals listed in full in an answer (all are counted).
MAX_REFUSALS_LISTED = 50

Restorer = Callable[[DeadLetter], Sequence[Restore] | None]


class SelectionError(ValueError):
    """A requeue or purge request that does not say clearly what to act on."""


@attrs.frozen
class Selection:
    """Which dead letters a requeue or purge acts on: exactly one of the three.

    Attributes:
        all: Every entry present when the operation begins.
        ids: These entries (ids as listed).
        oldest: The oldest N entries (across the plugin's lists).
    """

    all: bool = False
    ids: tuple[str, ...] = ()
    oldest: int | None = None

    def __attrs_post_init__(self) -> None:
        chosen = sum([self.all, bool(self.ids), self.oldest is not None])
        if chosen != 1:
            raise SelectionError('say which dead letters: {"all": true}, {"ids": [...]} '
                                 'or {"oldest": N}, exactly one')
        if self.oldest is not None and self.oldest < 1:
            raise SelectionError("oldest must be a positive number")

    @classmethod
    def parse(cls, body: Any) -> Selection:
        """From a request body (JSON object); `SelectionError` says what is wrong."""
        if not isinstance(body, Mapping):
            raise SelectionError('the body must be a JSON object such as {"oldest": 10}')
        unknown = set(body) - {"all", "ids", "oldest"}
        if unknown:
            raise SelectionError(f"unknown key(s): {', '.join(sorted(unknown))}")
        everything = body.get("all", False)
        ids = body.get("ids", [])
        oldest = body.get("oldest")
        if not isinstance(everything, bool):
            raise SelectionError("all must be true or false")
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            raise SelectionError("ids must be a list of entry ids")
        if oldest is not None and (not isinstance(oldest, int) or isinstance(oldest, bool)):
            raise SelectionError("oldest must be a whole number")
        return cls(all=everything, ids=tuple(dict.fromkeys(ids)), oldest=oldest)


@attrs.frozen
class Entry:
    """One dead letter as stored, and how to name it.

    Attributes:
        list: The dead-letter list holding it.
        raw: Its exact stored bytes (what removing it matches).
        letter: Decoded; for an unreadable entry, a stand-in with the reason.
        readable: False when the stored bytes were not a dead-letter document.
    """

    list: str
    raw: bytes
    letter: DeadLetter
    readable: bool = True

    @property
    def id(self) -> str:
        return self.letter.id

    @classmethod
    def decode(cls, key: str, raw: bytes) -> Entry:
        try:
            return cls(key, raw, DeadLetter.decode(key, raw))
        except (ValueError, KeyError, TypeError) as exc:
            # Pushed by hand, or by something else: still listed and purgeable.
            stand_in = DeadLetter(key, raw, f"not a dead-letter entry ({exc})", "?", at=0.0,
                                  id=entry_id(raw))
            return cls(key, raw, stand_in, readable=False)


@attrs.frozen
class Outcome:
    """What a requeue or purge did.

    Attributes:
        done: Items requeued (or purged).
        gone: Items selected but no longer there (requeued or purged by someone else).
        refused: ``(id, reason)`` of items a requeue left as dead letters.
        missing: Requested ids that no list holds.
    """

    done: int = 0
    gone: int = 0
    refused: list[tuple[str, str]] = attrs.Factory(list)
    missing: list[str] = attrs.Factory(list)

    def as_dict(self, verb: str) -> dict[str, Any]:
        return {
            verb: self.done,
            "gone": self.gone,
            "refused_count": len(self.refused),
            "refused": [{"id": i, "reason": r} for i, r in self.refused[:MAX_REFUSALS_LISTED]],
            "missing": self.missing,
        }


@attrs.frozen
class Stats:
    """The gauges' view: how many wait, and since when.

    Attributes:
        waiting: Entries across the plugin's lists.
        oldest_at: When the oldest one was rejected (epoch seconds), if any.
    """

    waiting: int
    oldest_at: float | None

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        age = None if self.oldest_at is None else round(max(0.0, now - self.oldest_at), 3)
        return {"waiting": self.waiting, "oldest_age_seconds": age}


# A reason's numbers and quoted values vary per item; grouping on the rest
# puts "no row with id = 7 ..." and "no row with id = 9 ..." together. Digits
# inside a name (``t_887c6_nodes``) are part of the name.
_VARYING = re.compile(r"""'[^']*'|"[^"]*"|(?<![\w.])-?\d+(\.\d+)?(?!\w|\.\d)""")


def reason_group(reason: str) -> str:
    """The reason with its item-specific parts (numbers, quoted values) elided."""
    return _VARYING.sub(lambda m: "…" if m.group(0)[0] in "'\"" else "N", reason)


@attrs.define(eq=False)
class Quarantine:
    """One plugin's dead letters (see the module docstring).

    Attributes:
        redis: The Redis handle.
        plugin: The plugin's name.
        lists: Its dead-letter lists.
        restorer: Maps a dead letter to its `Restore` operations (raising
            `NotRequeueable`), or None when the plugin does not say.
    """

    redis: RedisHandle
    plugin: str
    lists: tuple[str, ...]
    restorer: Restorer | None = None

    @classmethod
    def for_plugin(
        cls, pm: pluggy.PluginManager, plugin: str, config: Any, redis: RedisHandle,
    ) -> Quarantine:
        """Ask the plugin's hooks for its lists and its restore mapping."""
        lists = dead_letter_lists(pm, plugin, config)
        hook = pm.hook.syncd_dead_letter_restore
        restorer = None
        if hook.get_hookimpls():
            def restorer(letter: DeadLetter) -> Sequence[Restore] | None:
                return hook(plugin=plugin, config=config, letter=letter)
        return cls(redis, plugin, tuple(lists), restorer)

    # -- reading -------------------------------------------------------------------

    async def stats(self) -> Stats:
        """How many wait and the oldest one's time: one LLEN and LINDEX per list."""
        if not self.lists:
            return Stats(0, None)

        def read(client: redis_py.Redis) -> list[Any]:
            with client.pipeline(transaction=False) as pipe:
                for key in self.lists:
                    pipe.llen(key)
                    pipe.lindex(key, 0)  # RPUSHed: the head is the oldest
                return pipe.execute()

        replies = await self.redis.run(read)
        waiting, oldest = 0, None
        for key, (length, head) in zip(self.lists, _pairs(replies), strict=True):
            waiting += int(length)
            if head is not None:
                at = Entry.decode(key, head).letter.at
                oldest = at if oldest is None else min(oldest, at)
        return Stats(waiting, oldest)

    async def page(self, limit: int = 50, offset: int = 0) -> tuple[int, list[Entry]]:
        """``(total, entries)``: entries ``offset .. offset+limit`` newest first."""
        limit = max(1, min(limit, MAX_LIMIT))
        offset = max(0, offset)
        want = offset + limit

        def read(client: redis_py.Redis) -> list[Any]:
            with client.pipeline(transaction=False) as pipe:
                for key in self.lists:
                    pipe.llen(key)
                    pipe.lrange(key, -want, -1)
                return pipe.execute()

        replies = await self.redis.run(read) if self.lists else []
        total = 0
        newest: list[Iterable[Entry]] = []
        for key, (length, raws) in zip(self.lists, _pairs(replies), strict=True):
            total += int(length)
            newest.append([Entry.decode(key, raw) for raw in reversed(raws)])
        merged = heapq.merge(*newest, key=lambda e: -e.letter.at)
        return total, list(itertools.islice(merged, offset, want))

    async def reasons(self, scan: int = REASON_SCAN) -> tuple[int, list[dict[str, Any]]]:
        """``(scanned, groups)``: the newest ``scan`` entries' reasons, grouped, most first."""
        _, entries = await self._newest(scan)
        groups: Counter[str] = Counter()
        example: dict[str, str] = {}
        for entry in entries:
            group = reason_group(entry.letter.reason)
            groups[group] += 1
            example.setdefault(group, entry.letter.reason)
        return len(entries), [
            {"reason": group, "count": count, "example": example[group]}
            for group, count in groups.most_common()
        ]

    async def _newest(self, n: int) -> tuple[int, list[Entry]]:
        total, entries = 0, []
        for offset in range(0, n, MAX_LIMIT):
            total, page = await self.page(min(MAX_LIMIT, n - offset), offset)
            entries += page
            if len(page) < MAX_LIMIT:
                break
        return total, entries

    def restore_of(self, entry: Entry) -> list[Restore]:
        """The operations that put ``entry`` back; `NotRequeueable` says why not."""
        if not entry.readable:
            raise NotRequeueable(entry.letter.reason)
        if self.restorer is None:
            raise NotRequeueable(f"plugin {self.plugin} does not say how its dead letters "
                                 "go back (hook syncd_dead_letter_restore)")
        try:
            ops = self.restorer(entry.letter)
        except NotRequeueable:
            raise
        except Exception as exc:  # a plugin bug must not stop the others
            raise NotRequeueable(
                f"the plugin's restore failed: {type(exc).__name__}: {exc}") from exc
        if ops is None:
            raise NotRequeueable(f"plugin {self.plugin} does not say how this item goes back")
        return normalize(list(ops), entry.list)

    def describe(self, entry: Entry, now: float | None = None) -> dict[str, Any]:
        """An entry for the API and the page; the payload as text, or base64."""
        letter = entry.letter
        now = time.time() if now is None else now
        item: dict[str, Any] = {
            "id": letter.id,
            "list": entry.list,
            "reason": letter.reason,
            "at": letter.at,
            "at_iso": _iso(letter.at),
            "age_seconds": round(max(0.0, now - letter.at), 3),
            "source": letter.source,
        }
        text = _text_or_none(letter.payload_bytes)
        if text is None:
            item["payload_b64"] = base64.b64encode(letter.payload_bytes).decode("ascii")
        else:
            item["payload"] = text
        try:
            item["requeue"] = {"ok": True, "to": [op.describe() for op in self.restore_of(entry)]}
        except NotRequeueable as exc:
            item["requeue"] = {"ok": False, "reason": str(exc)}
        return item

    # -- acting --------------------------------------------------------------------

    async def requeue(
        self, selection: Selection, *, progress: Callable[[int], None] | None = None,
    ) -> Outcome:
        """Put the selected dead letters back at their sources, each exactly once."""
        outcome = Outcome()
        counts = {"done": 0, "gone": 0}

        async def act(key: str, entries: list[Entry]) -> int:
            items, ids = [], []
            for entry in entries:
                try:
                    ops = self.restore_of(entry)
                except NotRequeueable as exc:
                    outcome.refused.append((entry.id, str(exc)))
                    continue
                items.append((entry.raw, ops))
                ids.append(entry.id)
            results = await requeue_entries(self.redis, self.plugin, key, items,
                                            progress=progress)
            for entry_id_, result in zip(ids, results, strict=True):
                if result == REQUEUED:
                    counts["done"] += 1
                elif result == GONE:
                    counts["gone"] += 1
                else:
                    outcome.refused.append((entry_id_, result))
            return results.count(REQUEUED)

        found = await self._walk(selection, act)
        return attrs.evolve(outcome, done=counts["done"], gone=counts["gone"],
                            missing=self._missing(selection, found))

    async def purge(self, selection: Selection) -> Outcome:
        """Delete the selected dead letters for good."""
        if selection.all:
            done = 0
            for key in self.lists:
                done += await remove_all(self.redis, key)
            return Outcome(done)
        counts = {"done": 0, "gone": 0}

        async def act(key: str, entries: list[Entry]) -> int:
            removed = await remove_entries(self.redis, key, [entry.raw for entry in entries])
            counts["done"] += removed
            counts["gone"] += len(entries) - removed
            return removed

        found = await self._walk(selection, act)
        return Outcome(counts["done"], counts["gone"], [], self._missing(selection, found))

    def _missing(self, selection: Selection, found: set[str]) -> list[str]:
        return [i for i in selection.ids if i not in found]

    async def _walk(
        self, selection: Selection, act: Callable[[str, list[Entry]], Awaitable[int]],
    ) -> set[str]:
        """Hand the selection to ``act`` list by list, a page at a time, oldest first.

        ``act(list, entries)`` returns how many of them it removed: the rest
        keep their places, so the walk knows where the next page starts.
        Returns the ids handed over.
        """
        found: set[str] = set()
        if selection.oldest is not None:
            for key, entries in await self._oldest(selection.oldest):
                found.update(e.id for e in entries)
                await act(key, entries)
            return found
        wanted = set(selection.ids)
        for key in self.lists:
            length = await self.redis.run(lambda client, key=key: int(client.llen(key)))
            index = seen = 0
            # Stop at what the list held when we began: entries pushed since
            # (items failing again as they are requeued) are not chased.
            while seen < length and (selection.all or wanted):
                count = min(PAGE, length - seen)
                raws = await self.redis.run(
                    lambda client, key=key, index=index, count=count:
                    client.lrange(key, index, index + count - 1))
                if not raws:
                    break
                seen += len(raws)
                entries = [Entry.decode(key, raw) for raw in raws]
                if not selection.all:
                    entries = [e for e in entries if e.id in wanted]
                    wanted -= {e.id for e in entries}
                found.update(e.id for e in entries)
                removed = await act(key, entries) if entries else 0
                index += len(raws) - removed
        return found

    async def _oldest(self, n: int) -> list[tuple[str, list[Entry]]]:
        """The ``n`` oldest entries across the lists, grouped by list."""
        heads: list[list[Entry]] = []
        for key in self.lists:
            raws = await self.redis.run(lambda client, key=key: client.lrange(key, 0, n - 1))
            heads.append([Entry.decode(key, raw) for raw in raws])
        chosen = list(itertools.islice(heapq.merge(*heads, key=lambda e: e.letter.at), n))
        by_list: dict[str, list[Entry]] = {}
        for entry in chosen:
            by_list.setdefault(entry.list, []).append(entry)
        return list(by_list.items())


def dead_letter_lists(pm: pluggy.PluginManager, plugin: str, config: Any) -> list[str]:
    """The plugin's dead-letter lists: what its hook says, else ``config.dead_letter``."""
    lists: list[str] = []
    for answer in pm.hook.syncd_dead_letter_lists(plugin=plugin, config=config):
        if answer:
            lists += [answer] if isinstance(answer, str) else list(answer)
    if not lists:
        default = getattr(config, "dead_letter", None)
        if isinstance(default, str) and default:
            lists.append(default)
    return list(dict.fromkeys(lists))


def _pairs(replies: list[Any]) -> list[tuple[Any, Any]]:
    return list(zip(replies[0::2], replies[1::2], strict=True))


def _text_or_none(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"

