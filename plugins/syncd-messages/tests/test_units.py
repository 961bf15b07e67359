"""Pure logic: what becomes a message, the envelope, the webhook body, config checks."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import orjson
import pytest
from syncd_messages.config import MessagesConfig, secret_bytes
from syncd_messages.database import _jsonb_suspect
from syncd_messages.normalize import messages_of, normalize_batch, open_envelope
from syncd_messages.webhook import body, retry_after

import syncd
from syncd.config import structure

NOW = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def normalize(*items: bytes, max_bytes: int = 1 << 20):
    return normalize_batch(list(items), queue_type="in", max_bytes=max_bytes, now=NOW)


class TestNormalize:
    """A message is a JSON object, decided once, and kept byte for byte."""

    def test_json_objects_keep_their_bytes(self) -> None:
        raw = b'{"b": 1,  "a": [1, 2.50, 12345678901234567890123]}'
        result = normalize(raw, b'{"id":"x"}')
        assert messages_of(result.messages) == [raw, b'{"id":"x"}']
        assert result.rejected == [] and result.wrapped == 0

    def test_line_breaks_between_tokens_become_spaces(self) -> None:
        raw = b'\n{\n  "a": "line\\nbreak",\r\n  "b": 2\n}\n'
        [message] = messages_of(normalize(raw).messages)
        assert b"\n" not in message and b"\r" not in message
        assert json.loads(message) == {"a": "line\nbreak", "b": 2}

    @pytest.mark.parametrize("raw", [
        b"hello world", b'"a json string"', b"[1, 2]", b"42", b"NaN", b"{not json", b"null",
        "h\u00e9llo \U0001f600".encode(),
    ])
    def test_anything_else_that_is_text_is_wrapped(self, raw: bytes) -> None:
        result = normalize(raw)
        [message] = messages_of(result.messages)
        assert json.loads(message) == {
            "text": raw.decode(), "queueType": "in", "receivedAt": "2026-01-02T03:04:05.678Z"}
        assert result.wrapped == 1

    def test_unparsed_takes_what_looks_like_an_object_as_it_is(self) -> None:
        """For a database that parses every message itself (JSONB): no parse
        for a one-line ASCII object; the rest is normalized as ever."""
        looks = [b'{"id": "a"}', b"{not json}", b'{"a": 1} {"b": 2}']
        others = [b'{\n"id": "b"}', '{"id": "\u00e9"}'.encode(), b"raw", b""]
        result = normalize_batch([*looks, *others], queue_type="in", max_bytes=1 << 20,
                                 now=NOW, envelope=False, unparsed=True)
        parsed = normalize_batch([*looks, *others], queue_type="in", max_bytes=1 << 20,
                                 now=NOW, envelope=False)
        assert result.messages[:3] == looks
        assert result.messages[3:] == parsed.messages[3:]
        assert [json.loads(m)["text"] for m in parsed.messages[1:3]] == [
            "{not json}", '{"a": 1} {"b": 2}']
        assert result.rejected == parsed.rejected == [(6, "empty item")]

    def test_json_orjson_refuses_but_json_allows_is_kept(self) -> None:
        """Lone surrogate escapes are JSON; whether they can be stored is each writer's call."""
        raw = b'{"a": "\\ud800"}'
        assert messages_of(normalize(raw).messages) == [raw]

    @pytest.mark.parametrize(("raw", "reason"), [
        (b"", "empty item"),
        (b"  \n\t ", "empty item"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b'{"a": "\xe9"}', "not valid UTF-8"),
        (b"x" * 11, "over max_item_bytes (10)"),
    ])
    def test_no_message_is_rejected_with_a_reason(self, raw: bytes, reason: str) -> None:
        result = normalize(b'{"ok": 1}', raw, b"fine", max_bytes=10)
        assert len(result.messages) == 2
        [(position, why)] = result.rejected
        assert position == 1 and reason in why

    def test_envelope_carries_when_it_was_taken(self) -> None:
        [item] = normalize(b'{"a": 1}').messages
        taken, message = open_envelope(item)
        assert taken == int(NOW.timestamp() * 1000) and message == b'{"a": 1}'
        assert open_envelope(b'{"bare": 1}') == (None, b'{"bare": 1}')
        assert messages_of([b'{"bare": 1}', item]) == [b'{"bare": 1}', b'{"a": 1}']

    def test_without_envelope_the_same_messages_come_bare(self) -> None:
        """The database writer alone takes them straight from the intake."""
        items = [b'{"a": 1}', b"plain", b"", b'\n{"b":\n2}', b"\xff"]
        enveloped = normalize_batch(items, queue_type="in", max_bytes=100, now=NOW)
        bare = normalize_batch(items, queue_type="in", max_bytes=100, now=NOW, envelope=False)
        assert bare.messages == messages_of(enveloped.messages)
        assert (bare.rejected, bare.wrapped) == (enveloped.rejected, enveloped.wrapped)


class TestJsonbSuspects:
    """A cheap look for what PostgreSQL's JSONB may refuse (the database decides)."""

    @pytest.mark.parametrize(("message", "suspect"), [
        (b'{"a": "\\u0000"}', True),
        (b'{"a": "\\uD83D\\uDE00"}', True),  # a pair: fine, but the database says so
        (b'{"a": "\\u00e9"}', False),
        (b'{"a": "plain"}', False),
    ])
    def test_suspects(self, message: bytes, suspect: bool) -> None:
        assert _jsonb_suspect(message) is suspect


class TestWebhookBody:
    """The seed's body around the messages' own bytes."""

    def test_body_is_the_seeds_shape(self) -> None:
        messages = [b'{"id": 1,  "x": 12345678901234567890123}', b'{"text":"t"}']
        raw = body("out", messages, NOW)
        assert b'"messages":[' + b",".join(messages) + b"]" in raw
        assert orjson.loads(raw.replace(b"12345678901234567890123", b"1")) == {
            "queueType": "out", "messages": [{"id": 1, "x": 1}, {"text": "t"}],
            "timestamp": "2026-01-02T03:04:05.678Z", "count": 2}

    @pytest.mark.parametrize(("value", "seconds"), [
        ("3", 3.0), ("0", 0.0), ("100000", 600.0), (None, None), ("soon", None),
        ("Fri, 02 Jan 2026 03:04:15 GMT", 10.0),
    ])
    def test_retry_after(self, value: str | None, seconds: float | None) -> None:
        assert retry_after(value, now=NOW.replace(microsecond=0).timestamp()) == seconds


class TestConfig:
    """Wrong settings fail at start-up, naming the key."""

    def test_defaults(self) -> None:
        cfg = MessagesConfig()
        assert cfg.queues == {"in": "whatsapp:in", "out": "whatsapp:out"}
        assert cfg.writers == ["database"] and cfg.batch_size == 1000
        assert cfg.max_item_bytes == 1 << 20 and float(cfg.webhook_timeout) == 10

    @pytest.mark.parametrize(("section", "key", "problem"), [
        ({"writers": []}, "writers", "at least one"),
        ({"writers": ["database", "fax"]}, "writers", "unknown writer 'fax'"),
        ({"writers": ["file", "file"]}, "writers", "twice"),
        ({"writers": ["webhook"]}, "webhook_url", "required"),
        ({"webhook_url": "ftp://x"}, "webhook_url", "http"),
        ({"queues": {}}, "queues", "at least one"),
        ({"queues": {"in/out": "q"}}, "queues", "queue type"),
        ({"queues": {"a": "q", "b": "q"}}, "queues", "same Redis list"),
        ({"queues": {"a": "bad}{key"}}, "queues", "braces"),
        ({"webhook_secret": "not base64!"}, "webhook_secret", "whsec_"),
        ({"table": "messages; drop"}, "table", "identifier"),
        ({"retry_initial": "10s", "retry_max": "1s"}, "retry_max", "retry_initial"),
    ])
    def test_wrong_values_name_the_key(self, section: dict, key: str, problem: str) -> None:
        with pytest.raises(syncd.ConfigError) as caught:
            structure(MessagesConfig, section, "plugins.messages")
        assert caught.value.key == f"plugins.messages.{key}"
        assert problem in caught.value.problem

    def test_secret_must_be_real_base64(self) -> None:
        key = base64.b64encode(b"k" * 24).decode()
        assert secret_bytes(f"whsec_{key}") == b"k" * 24
        assert secret_bytes(key) == b"k" * 24
        assert secret_bytes("whsec_" + base64.b64encode(b"short").decode()) is None


class TestReceiver:
    """The test receiver outlives clients killed mid-request (chaos SIGKILLs the daemon)."""

    async def test_torn_request_costs_only_its_connection(self, nursery) -> None:
        import socket

        import httpx
        import trio
        from syncd_messages.receiver import Receiver

        receiver = Receiver()
        await nursery.start(receiver.serve)

        def torn() -> None:
            with socket.create_connection(("127.0.0.1", receiver.port)) as sock:
                sock.sendall(b"POST /hook HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")

        await trio.to_thread.run_sync(torn)
        async with httpx.AsyncClient() as client:
            answer = await client.post(receiver.url, content=b'{"queueType":"in","messages":[]}')
        assert answer.status_code == 200
        assert [r.answer for r in receiver.requests] == ["ok"]
