"""A dead letter is never much larger than its payload, whatever its bytes."""

from __future__ import annotations

import json

import pytest

from syncd.deadletter import BASE64_ABOVE, DeadLetter

BIG = BASE64_ABOVE + 1000


@pytest.mark.parametrize("payload", [b"\x01" * BIG, b'"' * BIG, b"\\" * BIG, "\x00é" * BIG],
                         ids=["control", "quotes", "backslashes", "nul-and-accents"])
def test_big_payload_costs_at_most_a_third_more(payload: bytes | str) -> None:
    entry = DeadLetter("k", payload, "too big", "votes", source="q")
    raw = entry.encode()
    assert len(raw) <= len(entry.payload_bytes) * 4 // 3 + 200
    assert DeadLetter.decode("k", raw).payload_bytes == entry.payload_bytes


def test_small_payload_stays_text_whatever_its_escapes() -> None:
    payload = '"\x01"' * 100
    doc = json.loads(DeadLetter("k", payload, "r", "p").encode())
    assert doc["payload"] == payload


def test_big_plain_text_stays_text() -> None:
    payload = "plain text " * (BASE64_ABOVE // 5)
    doc = json.loads(DeadLetter("k", payload, "r", "p").encode())
    assert doc["payload"] == payload
