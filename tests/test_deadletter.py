"""Dead letters: any payload round-trips exactly, and pushes land in order."""

from __future__ import annotations

import json
import os
from datetime import datetime

import pytest
import redis

from syncd import deadletter
from syncd.deadletter import (
    DeadLetter,
    forget_dead_letters_pushed,
    push_dead_letters,
    script_args,
)
from syncd.redis import RedisHandle


def test_text_payload_is_stored_as_text() -> None:
    entry = DeadLetter("votes:dead", '{"vote": "é"}', "bad vote", "votes", at=1_700_000_000.5)
    doc = json.loads(entry.encode())
    assert doc == {
        "id": entry.id,
        "payload": '{"vote": "é"}',
        "reason": "bad vote",
        "plugin": "votes",
        "at": 1_700_000_000.5,
        "at_iso": "2023-11-14T22:13:20.500000+00:00",
    }
    assert datetime.fromisoformat(doc["at_iso"]).timestamp() == entry.at


def test_utf8_bytes_with_nul_stay_text() -> None:
    raw = b"a\x00b\xc3\xa9\x00"
    doc = json.loads(DeadLetter("k", raw, "r", "p").encode())
    assert "payload_b64" not in doc
    assert doc["payload"].encode() == raw
    assert DeadLetter.decode("k", DeadLetter("k", raw, "r", "p").encode()).payload_bytes == raw


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xfe\x00\x80", b"\xc3", bytes(range(256)), "lone \udcff surrogate"],
    ids=["binary", "truncated-utf8", "all-bytes", "surrogate-str"],
)
def test_non_utf8_goes_base64_and_round_trips(payload: bytes | str) -> None:
    entry = DeadLetter("k", payload, "r", "p")
    doc = json.loads(entry.encode())
    assert "payload" not in doc
    back = DeadLetter.decode("k", entry.encode())
    assert back.payload_bytes == entry.payload_bytes
    assert (back.reason, back.plugin, back.at) == ("r", "p", entry.at)


def test_script_args_indexes_lists_in_first_seen_order() -> None:
    a1 = DeadLetter("a", b"1", "r", "p")
    b1 = DeadLetter("b", b"2", "r", "p")
    a2 = DeadLetter("a", b"3", "r", "p")
    lists, args = script_args([a1, b1, a2])
    assert lists == ["a", "b"]
    assert args == [1, a1.encode(), 2, b1.encode(), 1, a2.encode()]
    assert script_args([]) == ([], [])


async def test_push_count_read_round_trip_large_and_binary(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    big_binary = os.urandom(3 * 1024 * 1024) + b"\x00\xff"
    big_text = ("x\x00é" * 1_000_000).encode()  # ~4 MB of valid UTF-8 with NULs
    entries = [
        DeadLetter(f"{prefix}:dead", b"first", "r1", "votes"),
        DeadLetter(f"{prefix}:other", big_binary, "r2", "votes"),
        DeadLetter(f"{prefix}:dead", big_text, "r3", "votes"),
    ]
    assert await push_dead_letters(redis_handle, entries) == 3
    assert await push_dead_letters(redis_handle, []) == 0
    assert await deadletter.count(redis_handle, f"{prefix}:dead") == 2
    assert await deadletter.count(redis_handle, f"{prefix}:other") == 1
    dead = await deadletter.read(redis_handle, f"{prefix}:dead")
    assert [d.payload_bytes for d in dead] == [b"first", big_text]  # oldest first
    assert [d.reason for d in dead] == ["r1", "r3"]
    (other,) = await deadletter.read(redis_handle, f"{prefix}:other")
    assert other.payload_bytes == big_binary
    assert other == DeadLetter(f"{prefix}:other", big_binary, "r2", "votes", at=entries[1].at,
                               id=entries[1].id)


async def test_pushed_once_per_name_until_forgotten(
    redis_handle: RedisHandle, redis_client: redis.Redis, prefix: str
) -> None:
    """A job run again after a stall fails its last attempt again: one dead
    letter, not two; once it is retried from its first attempt, it may."""
    key = f"{prefix}:dead"
    letter = DeadLetter(key, b"job 7", "bad wallet", "portfolio")
    assert await push_dead_letters(redis_handle, [letter], once="job:7:3") == 1
    assert await push_dead_letters(redis_handle, [letter], once="job:7:3") == 0
    assert await push_dead_letters(redis_handle, [letter], once="job:8:3") == 1
    assert await deadletter.count(redis_handle, key) == 2
    await forget_dead_letters_pushed(redis_handle, key, ["job:7:1", "job:7:2", "job:7:3"])
    assert await push_dead_letters(redis_handle, [letter], once="job:7:3") == 1
    assert await deadletter.count(redis_handle, key) == 3


def test_source_round_trips_and_is_absent_when_unknown() -> None:
    entry = DeadLetter("votes:dead", "x", "bad", "votes", at=1.0, source="votes")
    assert json.loads(entry.encode())["source"] == "votes"
    assert DeadLetter.decode("votes:dead", entry.encode()).source == "votes"
    assert "source" not in json.loads(DeadLetter("k", "x", "r", "p").encode())


def test_a_source_key_that_is_not_utf8_round_trips() -> None:
    """Redis keys are bytes: a counter key like b"vod:views:\\xff1" must not
    make its own dead letter unencodable (it crashed the flush once)."""
    source = b"vod:views:\xff1".decode("utf-8", "surrogateescape")
    entry = DeadLetter("views:dead", "x", "bad id", "views", at=1.0, source=source)
    doc = json.loads(entry.encode())
    assert "source" not in doc and doc["source_b64"]
    back = DeadLetter.decode("views:dead", entry.encode())
    assert back.source == source
    assert back.source.encode("utf-8", "surrogateescape") == b"vod:views:\xff1"


class TestIds:
    """Every entry can be named: by its stored id, or by its bytes if it has none."""

    def test_new_entries_get_distinct_ids_that_round_trip(self) -> None:
        one, two = DeadLetter("k", "x", "r", "p", at=1.0), DeadLetter("k", "x", "r", "p", at=1.0)
        assert one.id != two.id
        assert len(one.id) == 16
        assert DeadLetter.decode("k", one.encode()).id == one.id

    def test_entries_without_an_id_get_one_from_their_bytes(self) -> None:
        old = b'{"payload":"x","reason":"r","plugin":"p","at":1.0}'
        first = DeadLetter.decode("k", old)
        assert first.id == DeadLetter.decode("k", old).id == deadletter.entry_id(old)
        assert first.id.startswith("h") and len(first.id) == 16
        assert DeadLetter.decode("k", old.replace(b"1.0", b"2.0")).id != first.id
