"""A plugin's dead letters for operators: pages, reasons, selections, requeue and purge."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
import redis

from syncd.deadletter import DeadLetter
from syncd.quarantine import Quarantine, Selection, SelectionError, reason_group
from syncd.redis import RedisHandle
from syncd.restore import NotRequeueable, Restore


def _restorer(letter: DeadLetter) -> Sequence[Restore]:
    """Queue items go back to their source; a payload saying "stuck" cannot."""
    if letter.payload_bytes == b"stuck":
        raise NotRequeueable("stuck for good")
    assert letter.source is not None
    return [Restore.rpush(letter.source, letter.payload_bytes)]


@pytest.fixture(name="box")
def _box(redis_handle: RedisHandle, prefix: str) -> Quarantine:
    return Quarantine(redis_handle, "p", (f"{prefix}:dead", f"{prefix}:dead2"), _restorer)


def _fill(client: redis.Redis, box: Quarantine, payloads: list[str], *, key: int = 0,
          start: float = 1000.0, reason: str = "bad") -> list[DeadLetter]:
    source = box.lists[0].replace(":dead", ":q")
    letters = [DeadLetter(box.lists[key], p, f"{reason} {i}", "p", at=start + i, source=source)
               for i, p in enumerate(payloads)]
    client.rpush(box.lists[key], *(letter.encode() for letter in letters))
    return letters


class TestSelection:
    """A requeue or purge must say exactly what it acts on."""

    @pytest.mark.parametrize(("body", "expected"), [
        ({"all": True}, Selection(all=True)),
        ({"ids": ["a", "b", "a"]}, Selection(ids=("a", "b"))),
        ({"oldest": 3}, Selection(oldest=3)),
    ])
    def test_parse(self, body: object, expected: Selection) -> None:
        assert Selection.parse(body) == expected

    @pytest.mark.parametrize("body", [
        None, [], {}, {"all": False}, {"all": True, "oldest": 1}, {"oldest": 0},
        {"oldest": "3"}, {"ids": "a"}, {"ids": [1]}, {"every": True}, {"all": "yes"},
    ])
    def test_anything_unclear_is_refused(self, body: object) -> None:
        with pytest.raises(SelectionError):
            Selection.parse(body)


class TestReading:
    """Pages newest first across lists, bounded reads, reasons grouped."""

    async def test_pages_are_newest_first_across_lists(
        self, box: Quarantine, redis_client: redis.Redis,
    ) -> None:
        first = _fill(redis_client, box, ["a", "b", "c"], start=1000)
        second = _fill(redis_client, box, ["x", "y"], key=1, start=1000.5)
        total, entries = await box.page(limit=3)
        assert total == 5
        assert [e.id for e in entries] == [first[2].id, second[1].id, first[1].id]
        total, entries = await box.page(limit=3, offset=3)
        assert [e.id for e in entries] == [second[0].id, first[0].id]
        stats = await box.stats()
        assert (stats.waiting, stats.oldest_at) == (5, 1000.0)

    async def test_describe_escapes_nothing_and_says_where_it_goes(
        self, box: Quarantine, redis_client: redis.Redis, prefix: str,
    ) -> None:
        _fill(redis_client, box, ["<script>alert(1)</script>", "stuck"])
        redis_client.rpush(box.lists[0], DeadLetter(box.lists[0], b"\xff\x00", "bin", "p",
                                                    source="s").encode())
        _, entries = await box.page()
        binary, stuck, script = (box.describe(e, now=2000.0) for e in entries)
        assert script["payload"] == "<script>alert(1)</script>"  # the page renders it as text
        assert script["requeue"] == {"ok": True, "to": [f"RPUSH {prefix}:q <script>alert(1)"
                                                        "</script>"]}
        assert script["age_seconds"] == 1000.0
        assert stuck["requeue"] == {"ok": False, "reason": "stuck for good"}
        assert binary["payload_b64"] == "/wA="

    async def test_reasons_are_grouped_without_their_item_specific_parts(
        self, box: Quarantine, redis_client: redis.Redis,
    ) -> None:
        letters = [DeadLetter(box.lists[0], "x", reason, "p") for reason in (
            "no row with id = 7 in nodes", "no row with id = 9 in nodes",
            "vote 'c' is not allowed", "vote 'd' is not allowed", "no row with id = 12 in nodes")]
        redis_client.rpush(box.lists[0], *(letter.encode() for letter in letters))
        scanned, groups = await box.reasons()
        assert scanned == 5
        assert groups == [
            {"reason": "no row with id = N in nodes", "count": 3,
             "example": "no row with id = 12 in nodes"},
            {"reason": "vote … is not allowed", "count": 2, "example": "vote 'd' is not allowed"},
        ]
        assert reason_group('field "x" is 3.5') == "field … is N"
        assert reason_group("no row 7 in t_887c6_nodes v2") == "no row N in t_887c6_nodes v2"
        assert reason_group("at byte 12.") == "at byte N."

    async def test_entries_pushed_by_hand_are_listed_and_purgeable(
        self, box: Quarantine, redis_client: redis.Redis,
    ) -> None:
        redis_client.rpush(box.lists[0], b"not json at all")
        _, (entry,) = await box.page()
        assert not entry.readable
        assert box.describe(entry)["requeue"]["ok"] is False
        outcome = await box.requeue(Selection(ids=(entry.id,)))
        assert (outcome.done, len(outcome.refused)) == (0, 1)
        assert (await box.purge(Selection(ids=(entry.id,)))).done == 1
        assert redis_client.llen(box.lists[0]) == 0


class TestRequeue:
    """Each selected item goes back once; refusals stay; nothing else moves."""

    async def test_requeue_by_ids_across_lists(
        self, box: Quarantine, redis_client: redis.Redis, prefix: str,
    ) -> None:
        first = _fill(redis_client, box, ["a", "b", "c"])
        second = _fill(redis_client, box, ["x"], key=1)
        outcome = await box.requeue(Selection(ids=(first[1].id, second[0].id, "nope")))
        assert (outcome.done, outcome.gone, outcome.missing) == (2, 0, ["nope"])
        assert sorted(redis_client.lrange(f"{prefix}:q", 0, -1)) == [b"b", b"x"]
        assert redis_client.llen(box.lists[0]) == 2
        assert redis_client.llen(box.lists[1]) == 0

    async def test_requeue_oldest_n(
        self, box: Quarantine, redis_client: redis.Redis, prefix: str,
    ) -> None:
        _fill(redis_client, box, ["a", "c"], start=1000)
        _fill(redis_client, box, ["b"], key=1, start=1000.5)
        outcome = await box.requeue(Selection(oldest=2))
        assert outcome.done == 2
        assert sorted(redis_client.lrange(f"{prefix}:q", 0, -1)) == [b"a", b"b"]
        _, (left,) = await box.page()
        assert left.letter.payload == "c"

    async def test_requeue_all_steps_over_refusals_and_ignores_newcomers(
        self, box: Quarantine, redis_client: redis.Redis, prefix: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr("syncd.quarantine.PAGE", 4)
        payloads = ["stuck", "a", "stuck", "b", "c", "stuck", "d", "e", "f", "stuck", "g"]
        _fill(redis_client, box, payloads)

        def newcomer(done: int) -> None:
            # An item failing again while the requeue runs comes back as a new
            # dead letter: the walk must not chase it.
            _fill(redis_client, box, [f"again{done}"], start=5000)

        outcome = await box.requeue(Selection(all=True), progress=newcomer)
        assert outcome.done == 7
        assert [reason for _, reason in outcome.refused] == ["stuck for good"] * 4
        assert redis_client.lrange(f"{prefix}:q", 0, -1) == [p.encode() for p in "abcdefg"]
        left = [json.loads(raw)["payload"] for raw in redis_client.lrange(box.lists[0], 0, -1)]
        assert left[:4] == ["stuck"] * 4
        assert all(p.startswith("again") for p in left[4:]) and left[4:]

    async def test_without_a_restorer_nothing_moves(
        self, redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str,
    ) -> None:
        box = Quarantine(redis_handle, "p", (f"{prefix}:dead",), None)
        _fill(redis_client, box, ["a"])
        outcome = await box.requeue(Selection(all=True))
        assert outcome.done == 0
        assert "syncd_dead_letter_restore" in outcome.refused[0][1]
        assert redis_client.llen(box.lists[0]) == 1


class TestPurge:
    """Purge removes exactly the selection."""

    async def test_purge_ids_oldest_and_all(
        self, box: Quarantine, redis_client: redis.Redis,
    ) -> None:
        letters = _fill(redis_client, box, ["a", "b", "c", "d"])
        _fill(redis_client, box, ["x"], key=1, start=999)
        assert (await box.purge(Selection(ids=(letters[2].id,)))).done == 1
        assert (await box.purge(Selection(ids=(letters[2].id,)))).missing == [letters[2].id]
        assert (await box.purge(Selection(oldest=2))).done == 2  # x, then a
        _, entries = await box.page()
        assert [e.letter.payload for e in entries] == ["d", "b"]
        assert (await box.purge(Selection(all=True))).done == 2
        assert (await box.stats()).waiting == 0
