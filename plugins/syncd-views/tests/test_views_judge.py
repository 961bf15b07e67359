"""The rules for counters and for pub/sub messages (pure logic)."""

from __future__ import annotations

import json

import pytest
from syncd_views.config import ViewsConfig
from syncd_views.judge import BAD_ID, BAD_VALUE, ViewsJudge, parse_updates, restore

import syncd

CONFIG = ViewsConfig(dead_letter="dead")
JUDGE = ViewsJudge(CONFIG, "views")


class TestCounters:
    """Each vod:views:{id} string is the views of one VOD since the last flush."""

    def test_good_counters(self) -> None:
        judged = JUDGE.judge([(b"vod:views:vod_2", b"3"), (b"vod:views:vod_1", b"10"),
                              (b"vod:views:v\xc3\xa9", b"-2")])
        assert JUDGE.rows(judged) == [("vod_1", 10), ("vod_2", 3), ("vé", -2)]
        assert judged.letters == []
        assert sum(map(JUDGE.units, judged.deltas.values())) == 11

    @pytest.mark.parametrize(("key", "value", "kind", "reason"), [
        (b"vod:views:vod_1", b"12abc", BAD_VALUE, "not a 64-bit integer"),
        (b"vod:views:vod_1", b"5\n", BAD_VALUE, "not a 64-bit integer"),
        (b"vod:views:vod_1", b"9" * 19, BAD_VALUE, "not a 64-bit integer"),
        (b"vod:views:vod_1", b"", BAD_VALUE, "not a 64-bit integer"),
        (b"vod:views:", b"1", BAD_ID, "no VOD id"),
        (b"vod:views:\xff1", b"1", BAD_ID, "no VOD id"),
    ])
    def test_bad_counters(self, key: bytes, value: bytes, kind: str, reason: str) -> None:
        judged = JUDGE.judge([(key, value)])
        assert JUDGE.rows(judged) == []
        (letter,) = judged.letters
        assert (letter.kind, letter.entry.key, letter.entry.plugin) == (kind, "dead", "views")
        assert reason in letter.entry.reason
        payload = json.loads(letter.entry.payload)
        assert payload["key"].encode("utf-8", "surrogateescape") == key
        assert payload["value"].encode("utf-8", "surrogateescape") == value
        assert letter.entry.source == payload["key"]

    def test_pattern_with_a_tail(self) -> None:
        config = ViewsConfig(key_pattern="v:*:n")
        judge = ViewsJudge(config, "views")
        assert judge.rows(judge.judge([(b"v:a:n", b"1"), (b"v::n", b"1")])) == [("a", 1)]
        assert config.key("x") == "v:x:n"


class TestMessages:
    """{"vodId", "count"} messages: summed per VOD; anything else a dead letter."""

    def test_good_messages_sum_per_vod(self) -> None:
        updates = parse_updates([b'{"vodId": "vod_1", "count": 1}',
                                 b'{"vodId": "vod_1", "count": 2, "extra": true}',
                                 b'{"count": 5, "vodId": "vod_2"}'], CONFIG, "views")
        assert updates.counts == {"vod_1": 3, "vod_2": 5}
        assert (updates.messages, updates.letters) == (3, [])

    @pytest.mark.parametrize(("payload", "reason"), [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"count": 1}', "no vodId"),
        (b'{"vodId": "", "count": 1}', "no vodId"),
        (b'{"vodId": 5, "count": 1}', "no vodId"),
        (b'{"vodId": "v", "count": 0}', "count is not an integer between 1 and"),
        (b'{"vodId": "v", "count": -1}', "count is not"),
        (b'{"vodId": "v", "count": 1.5}', "count is not"),
        (b'{"vodId": "v", "count": "1"}', "count is not"),
        (b'{"vodId": "v", "count": true}', "count is not"),
        (b'{"vodId": "v", "count": 1000001}', "count is not"),
    ])
    def test_malformed(self, payload: bytes, reason: str) -> None:
        updates = parse_updates([payload, b'{"vodId": "ok", "count": 1}'], CONFIG, "views")
        assert updates.counts == {"ok": 1}
        (letter,) = updates.letters
        assert reason in letter.reason
        assert letter.payload_bytes == payload
        assert letter.source == CONFIG.channel


class TestConfig:
    @pytest.mark.parametrize("pattern", ["vod:views", "vod:*:*", "vod:[ab]:*"])
    def test_bad_key_pattern(self, pattern: str) -> None:
        with pytest.raises(ValueError, match=r"must contain \*"):
            ViewsConfig(key_pattern=pattern)

    def test_channels_may_be_off(self) -> None:
        config = ViewsConfig(channel=None, totals_channel=None)
        assert (config.channel, config.totals_channel) == (None, None)


class TestRestore:
    """A quarantined counter can go back onto its key; a malformed message cannot."""

    def test_counter_goes_back_exactly(self) -> None:
        (letter,) = JUDGE.judge([(b"vod:views:\xff1", b"7")]).letters
        (op,) = restore(letter.entry)
        assert op == syncd.Restore.incrby(b"vod:views:\xff1", 7)

    @pytest.mark.parametrize("payload", [b"not json", b'{"vodId": "v", "count": 0}'])
    def test_malformed_message_cannot(self, payload: bytes) -> None:
        (letter,) = parse_updates([payload], CONFIG, "views").letters
        with pytest.raises(syncd.NotRequeueable):
            restore(letter)

    def test_bad_value_cannot(self) -> None:
        (letter,) = JUDGE.judge([(b"vod:views:a", b"12abc")]).letters
        with pytest.raises(syncd.NotRequeueable, match="not a 64-bit integer"):
            restore(letter.entry)
