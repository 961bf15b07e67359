"""Validation of single items: pure logic, no servers."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from syncd_votes.validate import Invalid, parse_batch, parse_timestamp, parse_vote

NOW = datetime(2030, 5, 6, 7, 8, 9, 123456)


def vote(**doc: object) -> bytes:
    return json.dumps(doc).encode()


class TestValid:
    """What the seed accepted is still accepted, in every timestamp form."""

    def test_iso_with_offset_becomes_utc(self) -> None:
        v = parse_vote(vote(vote="a", voter_id="u1", timestamp="2024-03-01T12:00:00+02:00"),
                       now=NOW)
        assert v == ("a", "u1", datetime(2024, 3, 1, 10, 0, 0))

    @pytest.mark.parametrize("ts", [
        "2024-03-01T10:00:00Z", "2024-03-01T10:00:00", "2024-03-01 10:00:00.987",
        1709287200, 1709287200.9, 1709287200000, 1709287200999,
    ])
    def test_timestamp_forms(self, ts: object) -> None:
        assert parse_timestamp(ts, NOW) == datetime(2024, 3, 1, 10, 0, 0)

    def test_missing_or_null_timestamp_is_now(self) -> None:
        assert parse_vote(vote(vote="a", voter_id="u"), now=NOW).timestamp == NOW.replace(
            microsecond=0)
        assert parse_timestamp(None, NOW) == NOW.replace(microsecond=0)

    def test_unicode_and_sql_looking_text_kept_verbatim(self) -> None:
        v = parse_vote(vote(vote="🗳️ نعم", voter_id="'; DROP TABLE votes; --"), now=NOW)
        assert v.vote == "🗳️ نعم"
        assert v.voter_id == "'; DROP TABLE votes; --"

    def test_nul_byte_is_left_to_the_database(self) -> None:
        assert parse_vote(vote(vote="a\x00b", voter_id="u"), now=NOW).vote == "a\x00b"

    def test_extra_fields_ignored(self) -> None:
        assert parse_vote(vote(vote="a", voter_id="u", poll=7), now=NOW).vote == "a"

    def test_limits_are_inclusive(self) -> None:
        v = parse_vote(vote(vote="x" * 10, voter_id="y" * 255), now=NOW)
        assert (len(v.vote), len(v.voter_id)) == (10, 255)


class TestInvalid:
    """Everything else is rejected with a reason a person can act on."""

    @pytest.mark.parametrize(("raw", "reason"), [
        (b"not json", "not JSON"),
        (b"", "not JSON"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b"[1, 2]", "not a JSON object (got an array)"),
        (b'"a"', "not a JSON object (got a string)"),
        (b"null", "not a JSON object (got null)"),
        (vote(voter_id="u"), "missing field 'vote'"),
        (vote(vote="a"), "missing field 'voter_id'"),
        (vote(vote=1, voter_id="u"), "field 'vote' must be a string, got a number"),
        (vote(vote="a", voter_id=7), "field 'voter_id' must be a string, got a number"),
        (vote(vote=None, voter_id="u"), "field 'vote' must be a string, got null"),
        (vote(vote="", voter_id="u"), "field 'vote' is empty"),
        (vote(vote="  ", voter_id="u"), "field 'vote' is empty"),
        (vote(vote="a", voter_id=""), "field 'voter_id' is empty"),
        (vote(vote="x" * 11, voter_id="u"), "field 'vote' is 11 characters, more than 10"),
        (vote(vote="a", voter_id="u" * 256), "field 'voter_id' is 256 characters"),
        (b'{"vote": "\\ud800", "voter_id": "u"}', "lone surrogate"),
        (vote(vote="a", voter_id="u", timestamp="yesterday"), "not ISO 8601"),
        (vote(vote="a", voter_id="u", timestamp=True), "got a boolean"),
        (vote(vote="a", voter_id="u", timestamp=[1]), "got an array"),
        (vote(vote="a", voter_id="u", timestamp=10**30), "out of range"),
        (vote(vote="a", voter_id="u", timestamp=-(10**14)), "out of range"),
        (vote(vote="a", voter_id="u", timestamp="0999-12-31T00:00:00"), "out of range"),
        (vote(vote="a", voter_id="u", timestamp="0001-01-01T00:00:00+01:00"), "out of range"),
        (b'{"vote": "a", "voter_id": "u", "timestamp": NaN}', "not JSON we accept"),
        (b'{"vote": "a", "voter_id": "u", "timestamp": 1' + b"0" * 5000 + b"}", "not JSON"),
        (b"[" * 100_000, "not JSON"),
    ])
    def test_reason(self, raw: bytes, reason: str) -> None:
        with pytest.raises(Invalid) as info:
            parse_vote(raw, now=NOW, max_bytes=1 << 20)
        assert reason in str(info.value)

    def test_oversized_item_is_not_even_parsed(self) -> None:
        raw = vote(vote="a", voter_id="u", pad="x" * (1 << 20))
        with pytest.raises(Invalid, match="bytes, more than max_item_bytes"):
            parse_vote(raw, now=NOW)

    def test_allowed_votes(self) -> None:
        assert parse_vote(vote(vote="a", voter_id="u"), now=NOW, allowed={"a", "b"}).vote == "a"
        with pytest.raises(Invalid, match="not one of allowed_votes"):
            parse_vote(vote(vote="c", voter_id="u"), now=NOW, allowed={"a", "b"})


def test_parse_batch_keeps_positions() -> None:
    parsed = parse_batch([vote(vote="a", voter_id="1"), b"junk", vote(vote="b", voter_id="2")],
                         now=NOW)
    assert [p for p, _ in parsed.votes] == [0, 2]
    assert [p for p, _ in parsed.invalid] == [1]


class TestFastPathAgreesWithReference:
    """`parse_batch`'s fast path must sort every item exactly as `parse_vote` does."""

    CORPUS = [
        *(vote(vote=v, voter_id="u", timestamp=ts) for v in ("a", "x" * 10) for ts in (
            "2024-03-01T10:00:00", "2024-03-01T10:00:00Z", "2024-03-01 10:00:00",
            "2024-03-01x10:00:00", "2024-03-01T10:00:00+02:00", "2024-03-01T10:00:00.5",
            "2024-03-01T10:00:00.5Z", "2024-W09-5T10:00:00", "2024-061T10:00:00",
            "0999-12-31T23:59:59", "0999-12-31T23:59:59Z", "1000-01-01T00:00:00",
            "9999-12-31T23:59:59Z", "2024-02-30T10:00:00", "2024-03-01T24:00:00",
            "2024-03-01T10:00:00Y", "20240301T100000", "", " ", "yesterday",
            0, 1, -1, 59, 60, -61, 1709287200, 1709287200.9, -1709287200.5, 1709287200000,
            1709287200999, 99_999_999_999, 100_000_000_000, 253402300799, 253402300800,
            -30610224000, -30610224001, 10**15 - 1, 10**15, -(10**14), 10**30, 2**64, -(2**63) - 1,
            1e300, 0.0, -0.0, None, True, [1], {"t": 1},
        )),
        vote(vote="a", voter_id="u"),
        vote(vote="a", voter_id="u", timestamp=None, extra=[1, 2]),
        vote(vote="", voter_id="u"), vote(vote=" ", voter_id="u"), vote(vote="a", voter_id="\t"),
        vote(vote="x" * 11, voter_id="u"), vote(vote="a", voter_id="u" * 255),
        vote(vote="a", voter_id="u" * 256), vote(vote="é", voter_id="u"),
        vote(vote="a", voter_id="ü" * 255), vote(vote="🗳️", voter_id="'; DROP TABLE votes; --"),
        vote(vote="a\x00b", voter_id="u"), vote(vote=1, voter_id="u"), vote(vote="a", voter_id=2),
        vote(vote=True, voter_id="u"), vote(voter_id="u"), vote(vote="a"),
        b'{"vote": "\\ud800", "voter_id": "u"}', b'{"vote": "a", "voter_id": "u\\udfff"}',
        b'{"vote": "a", "vote": "b", "voter_id": "u"}', b'{"vote": "a", "voter_id": "u\x01"}',
        b'{"vote": "a", "voter_id": "u", "timestamp": NaN}',
        b'{"vote": "a", "voter_id": "u", "timestamp": 1e400}',
        b'{"vote": "a", "voter_id": "u", "timestamp": 1' + b"0" * 30 + b"}",
        b'\xef\xbb\xbf{"vote": "a", "voter_id": "u"}', b'{"vote": "a", "voter_id": "\xff"}',
        b" {\"vote\": \"a\", \"voter_id\": \"u\"} ", b"[" * 2000 + b"]" * 2000, b"", b"null",
        b"not json", b'"a"', b"[1]", b'{"vote": "a", "voter_id": "u", "pad": "' + b"x" * 70000
        + b'"}',
    ]

    @pytest.mark.parametrize("allowed", [None, {"a", "🗳️"}])
    @pytest.mark.parametrize("text", [False, True])
    def test_same_answer(self, text: bool, allowed: set[str] | None) -> None:
        parsed = parse_batch(self.CORPUS, now=NOW, allowed=allowed, text=text)
        votes, invalid = dict(parsed.votes), dict(parsed.invalid)
        assert sorted([*votes, *invalid]) == list(range(len(self.CORPUS)))
        for position, raw in enumerate(self.CORPUS):
            try:
                expected = parse_vote(raw, now=NOW, allowed=allowed)
            except Invalid as exc:
                assert invalid.get(position) == str(exc), raw[:80]
                continue
            if text:
                expected = expected._replace(timestamp=str(expected.timestamp))
            assert votes.get(position) == expected, raw[:80]

    def test_text_timestamps_are_datetime_text(self) -> None:
        parsed = parse_batch([vote(vote="a", voter_id="u", timestamp=ts) for ts in (
            "2024-03-01T10:00:00Z", 1709287200, 1709287200999, None)], now=NOW, text=True)
        assert [v.timestamp for _, v in parsed.votes] == [
            "2024-03-01 10:00:00", "2024-03-01 10:00:00", "2024-03-01 10:00:00",
            "2030-05-06 07:08:09"]
