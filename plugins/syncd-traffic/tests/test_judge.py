"""The rules that sort a snapshot into SQL deltas and dead letters (pure logic)."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping

import pytest
from syncd_traffic.config import TrafficConfig
from syncd_traffic.judge import (
    BAD_ID,
    BAD_VALUE,
    MISSING_ROW,
    UNKNOWN_FIELD,
    Judged,
    _judge_one,
    judge,
    missing_letters,
    node_id,
)

CONFIG = TrafficConfig(dead_letter="dead")


def raw(entries: list[tuple[str, Mapping[str, bytes]]]) -> list[tuple[bytes, list[bytes]]]:
    """Counters as a snapshot hands them over: bytes keys, flat field lists."""
    return [(key.encode(), [x for f, v in fields.items() for x in (f.encode(), v)])
            for key, fields in entries]


class TestNodeId:
    """The id is the part of the key where the pattern says {node_id}."""

    @pytest.mark.parametrize(("key", "expected"), [
        ("node:7:traffic", 7),
        ("node:007:traffic", 7),
        ("node:-3:traffic", -3),
        ("node:9223372036854775807:traffic", 2**63 - 1),
        ("node:9223372036854775808:traffic", None),
        ("node:abc:traffic", None),
        ("node:1.5:traffic", None),
        ("node::traffic", None),
        ("node: 7:traffic", None),
        ("node:7:traffic:x", None),
        ("node:٣:traffic", None),  # an Arabic-Indic digit is not an id
        ("node:7\n:traffic", None),  # a regex's $ would let the newline through
        ("node:-7\n:traffic", None),
    ])
    def test_parse(self, key: str, expected: int | None) -> None:
        assert node_id(key, CONFIG) == expected

    def test_custom_pattern(self) -> None:
        config = TrafficConfig(key_pattern="t{node_id}")
        assert node_id("t42", config) == 42
        assert config.scan_pattern == "t*"

    def test_glob_characters_are_literal_in_scan_pattern(self) -> None:
        config = TrafficConfig(key_pattern="a[1]*?:{node_id}")
        assert config.scan_pattern == r"a\[1\]\*\?:*"


class TestJudge:
    """Good counters become one row per node; bad ones a dead letter each."""

    def test_good_counters_sum_per_node(self) -> None:
        judged = judge(raw([
            ("node:1:traffic", {"upload": b"10", "download": b"5"}),
            ("node:01:traffic", {"upload": b"1"}),
            ("node:2:traffic", {"download": b"-4"}),
        ]), CONFIG, "traffic")
        assert judged.rows(CONFIG) == [(1, 16), (2, -4)]
        assert judged.letters == []
        assert judged.bytes == 12

    def test_direction_columns(self) -> None:
        config = TrafficConfig(upload_column="up", download_column="down")
        judged = judge(raw([("node:1:traffic", {"upload": b"10", "download": b"5"})]), config, "t")
        assert config.columns == ("traffic_used", "up", "down")
        assert judged.rows(config) == [(1, 15, 10, 5)]

    @pytest.mark.parametrize(("fields", "reason"), [
        ({"upload": b"12kb", "download": b"5"}, "upload not a 64-bit integer"),
        ({"upload": b"1.5"}, "upload not a 64-bit integer"),
        ({"upload": b"", "download": b"x"}, "download and upload not a 64-bit integer"),
        ({"upload": b"99999999999999999999"}, "upload not a 64-bit integer"),
        ({"upload": b"9223372036854775807", "download": b"1"}, "overflows BIGINT"),
        ({"upload": b"5\n", "download": b"1"}, "upload not a 64-bit integer"),
        ({"upload": b"-5\n"}, "upload not a 64-bit integer"),
    ])
    def test_bad_value_quarantines_whole_hash(self, fields: dict, reason: str) -> None:
        judged = judge(raw([("node:1:traffic", fields)]), CONFIG, "traffic")
        assert judged.rows(CONFIG) == []
        (letter,) = judged.letters
        assert letter.kind == BAD_VALUE
        assert reason in letter.entry.reason
        payload = json.loads(letter.entry.payload)
        assert payload == {"key": "node:1:traffic",
                           "values": {f: v.decode() for f, v in fields.items()}}

    def test_bad_id(self) -> None:
        judged = judge(raw([("node:abc:traffic", {"upload": b"1"})]), CONFIG, "traffic")
        (letter,) = judged.letters
        assert (letter.kind, letter.entry.key, letter.entry.plugin) == (BAD_ID, "dead", "traffic")
        assert "node id" in letter.entry.reason

    def test_unknown_fields_quarantined_known_applied(self) -> None:
        judged = judge(raw([("node:3:traffic", {"upload": b"7", "last_seen": b"\xff1"})]),
                       CONFIG, "traffic")
        assert judged.rows(CONFIG) == [(3, 7)]
        (letter,) = judged.letters
        assert letter.kind == UNKNOWN_FIELD
        payload = json.loads(letter.entry.payload)
        # A byte that is not UTF-8 survives as a surrogate escape.
        assert payload["values"]["last_seen"].encode("utf-8", "surrogateescape") == b"\xff1"

    def test_missing_rows_become_letters_with_their_sources(self) -> None:
        judged = judge(raw([
            ("node:5:traffic", {"upload": b"1"}),
            ("node:05:traffic", {"download": b"2"}),
            ("node:6:traffic", {"upload": b"3"}),
        ]), CONFIG, "traffic")
        letters = missing_letters(judged, [5], CONFIG, "traffic")
        assert [json.loads(x.entry.payload)["key"] for x in letters] == [
            "node:5:traffic", "node:05:traffic"]
        assert {x.kind for x in letters} == {MISSING_ROW}
        assert "insert_missing" in letters[0].entry.reason


class TestFastPath:
    """The raw-bytes fast path must judge exactly as the general path does."""

    @pytest.mark.parametrize(("fields", "expected"), [
        ({"upload": b"10", "download": b"5"}, [(1, 15)]),
        ({"download": b"5", "upload": b"10"}, [(1, 15)]),  # HINCRBY order varies
        ({"upload": b"999999999999999999", "download": b"999999999999999999"},
         [(1, 1999999999999999998)]),
        ({"upload": b"+5", "download": b"1"}, []),  # int() would take these
        ({"upload": b" 5", "download": b"1"}, []),
        ({"upload": b"1_0", "download": b"1"}, []),
        ({"upload": "٣".encode(), "download": b"1"}, []),
        ({"upload": b"1", "uplaod": b"1"}, [(1, 1)]),
    ])
    def test_shapes(self, fields: dict, expected: list) -> None:
        judged = judge(raw([("node:1:traffic", fields)]), CONFIG, "traffic")
        assert judged.rows(CONFIG) == expected
        assert len(judged.letters) == (0 if len(fields) == 2 and expected
                                       and set(fields) == {"upload", "download"} else 1)

    def test_same_as_general_path_on_a_mixed_corpus(self) -> None:
        rng = random.Random(7)
        ids = ["1", "2", "02", "x", "", "-4", "9" * 18, "9" * 19, "٣"]
        values = [b"0", b"7", b"-3", b"12kb", b"", b"9" * 18, b"9" * 19, b" 1", b"+1"]
        names = ["upload", "download", "other"]
        corpus = []
        for _ in range(3000):
            fields = {rng.choice(names): rng.choice(values) for _ in range(rng.randint(1, 3))}
            corpus.append((f"node:{rng.choice(ids)}:traffic", fields))
        pairs = raw(corpus)
        fast = judge(pairs, CONFIG, "traffic")
        general = Judged()
        for key, flat in pairs:
            _judge_one(general, key, flat, CONFIG, "traffic")
        assert fast.deltas == general.deltas
        assert [(x.kind, x.entry.payload, x.entry.reason) for x in fast.letters] == [
            (x.kind, x.entry.payload, x.entry.reason) for x in general.letters]
        assert {nid: [k for k, _ in src] for nid, src in fast.sources.items()} == {
            nid: [k for k, _ in src] for nid, src in general.sources.items()}
