"""The messages plugin in a real daemon, in-process: real Redis, databases, directory, HTTP."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from collections import Counter
from typing import Any

import pytest
import syncd_messages
import trio
from messages_support import Messages
from syncd_messages.keys import lane_key
from syncd_messages.receiver import Receiver, token

import syncd
from syncd.quarantine import Selection
from syncd.testing import daemon_config, run_daemon, wait_for

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


class Events:
    """Records what ``sync_success`` / ``sync_error`` listeners receive."""

    def __init__(self) -> None:
        self.success: list[syncd.SyncResult] = []
        self.errors: list[BaseException] = []

    @syncd.hookimpl
    def syncd_sync_success(self, plugin: str, result: syncd.SyncResult, duration: float) -> None:
        self.success.append(result)

    @syncd.hookimpl
    def syncd_sync_error(self, plugin: str, error: BaseException) -> None:
        self.errors.append(error)


def daemon(messages: Messages, receiver: Receiver, *extra: object, **options: Any) -> Any:
    section = messages.section(webhook_url=receiver.url, webhook_secret=SECRET,
                               retry_initial="50ms", retry_max="200ms", **options)
    config = daemon_config({"messages": section}, {"default": messages.url})
    return run_daemon(config, [syncd_messages, *extra])


def delivered_tokens(receiver: Receiver, queue_type: str) -> list[str]:
    return [token(m) for r in receiver.delivered() if r.body["queueType"] == queue_type
            for m in r.messages]


def sample(n: int, queue_type: str) -> list[bytes]:
    """JSON objects in several spellings, raw text, and two items that are no message."""
    items: list[bytes] = []
    for i in range(n):
        tag = f"{queue_type}{i}"
        if i % 5 == 1:
            items.append(f"raw text {tag} \U0001f600".encode())
        elif i % 5 == 2:
            items.append(f'{{\n  "id": "{tag}",\n  "n": 12345678901234567890123\n}}'.encode())
        else:
            items.append(json.dumps({"id": tag, "body": f"hello {tag}"}).encode())
    return items


@pytest.fixture(name="receiver")
async def _receiver(nursery: trio.Nursery) -> Receiver:
    receiver = Receiver(secret=SECRET)
    await nursery.start(receiver.serve)
    return receiver


class TestEveryWriter:
    """Each writer gets every message once, in queue order, as the same bytes."""

    async def test_identical_bytes_in_order(self, messages: Messages, receiver: Receiver) -> None:
        events = Events()
        produced = {q: sample(120, q) for q in ("in", "out")}
        for q, items in produced.items():
            messages.push(q, *items)  # one LPUSH per batch of items: oldest first
        messages.push("in", b"", b"\xff\xfe broken")
        def writes() -> int:
            return sum(e.detail["processedCount"] for e in events.success if "writer" in e.detail)

        async with daemon(messages, receiver, events, batch_size=50) as d:
            await wait_for(lambda: messages.pending() == 0, 30)
            # Reported just after each ack: wait for the last report too.
            await wait_for(lambda: writes() == 3 * 240, 10)
            status = d.runner("messages").status()["detail"]
        for q, items in produced.items():
            lines = messages.lines(q)
            assert len(lines) == len(items)
            tokens = [token(json.loads(line)) for line in lines]
            assert [t.split()[-2] if t.startswith("raw") else t for t in tokens] == [
                f"{q}{i}" for i in range(len(items))]
            for raw, line in zip(items, lines, strict=True):
                if not raw.startswith(b"raw"):
                    assert line == raw.replace(b"\n", b" ")  # the producer's own bytes
            rows = messages.rows(q)
            if messages.env.dialect == "postgresql":  # JSONB prints its own spacing
                assert [json.loads(r[1]) for r in rows] == [json.loads(x) for x in lines]
            else:
                assert [r[1] for r in rows] == [line.decode() for line in lines]
            webhook = [m for r in receiver.delivered() if r.body["queueType"] == q
                       for m in r.messages]
            assert webhook == [json.loads(line) for line in lines]
        assert all(r.signed for r in receiver.requests)
        assert len({r.id for r in receiver.requests}) == len(receiver.requests)
        assert all(r.id == r.idempotency_key and r.id.startswith("msg_")
                   for r in receiver.requests)
        dead = messages.dead_letters("in")
        assert sorted(d.reason.split(":")[0] for d in dead) == ["empty item", "not valid UTF-8"]
        assert {d.source for d in dead} == {messages.queues["in"]}
        writers = status["queues"]["in"]["writers"]
        assert {w: s["delivered"] for w, s in writers.items()} == {
            "database": 120, "file": 120, "webhook": 120}
        assert status["queues"]["in"]["intake"]["dead_lettered"] == 2
        details = [e.detail for e in events.success if "writer" in e.detail]
        assert sum(d["processedCount"] for d in details) == 3 * 240
        assert sum(d["inProcessed"] for d in details) == 3 * 120
        assert sum(d["outProcessed"] for d in details) == 3 * 120
        assert all(isinstance(d["duration"], float) for d in details)


class TestWebhookDown:
    """A writer that is down does not stop the others; its backlog waits in Redis."""

    async def test_others_keep_up_then_the_webhook_catches_up(
        self, pg_messages: Messages, receiver: Receiver
    ) -> None:
        messages = pg_messages
        events = Events()
        receiver.plan = ["500", "close", "429:1", "hang"]
        receiver.default = "503"
        items = [json.dumps({"id": f"m{i}"}).encode() for i in range(300)]
        messages.push("in", *items)
        async with daemon(messages, receiver, events, batch_size=100,
                          webhook_timeout="1s") as d:
            runner = d.runner("messages")
            await wait_for(lambda: len(messages.rows("in")) == 300, 30)
            await wait_for(lambda: len(messages.lines("in")) == 300, 30)
            await wait_for(lambda: receiver.hanging == 1 and len(receiver.requests) >= 6, 30)
            # The webhook's share waits in Redis, visible per writer.
            webhook_key = lane_key(messages.queues["in"], "webhook")
            held = f"{webhook_key}:processing:{d.config.instance}"
            assert messages.waiting("in", "webhook") + messages.env.redis.llen(held) == 300
            assert await runner.worker.backlog() == 300
            writer = runner.status()["detail"]["queues"]["in"]["writers"]["webhook"]
            assert writer["state"] == "retrying" and writer["waiting"] == 300
            assert writer["oldest_age_seconds"] > 0
            assert "webhook answered 503" in writer["last_error"]["message"]
            assert runner.status()["detail"]["queues"]["in"]["writers"]["database"][
                "waiting"] == 0
            registry = d.metrics.registry
            assert registry.get_sample_value(
                "messages_waiting", {"queue": "in", "writer": "webhook"}) == 300
            assert registry.get_sample_value(
                "messages_oldest_age_seconds", {"queue": "in", "writer": "webhook"}) > 0
            assert registry.get_sample_value(
                "messages_writer_up", {"queue": "in", "writer": "webhook"}) == 0
            assert runner.state == "running" and runner.restarts == 0
            assert any("503" in str(e) for e in events.errors)
            # The receiver comes back: the webhook catches up, in order.
            receiver.default = "ok"
            await wait_for(lambda: messages.pending() == 0, 30)
        answers = Counter(r.answer for r in receiver.requests)
        assert answers["500"] == answers["close"] == answers["429:1"] == answers["hang"] == 1
        assert delivered_tokens(receiver, "in") == [f"m{i}" for i in range(300)]
        # Repeats only under the same id: each batch id was refused, then delivered once.
        ok_ids = [r.id for r in receiver.delivered()]
        assert len(ok_ids) == len(set(ok_ids))
        assert {r.id for r in receiver.requests} == set(ok_ids)

    async def test_a_refused_batch_is_dead_lettered_for_the_webhook_only(
        self, pg_messages: Messages, receiver: Receiver
    ) -> None:
        messages = pg_messages
        receiver.plan = ["400"]
        messages.push("out", *[json.dumps({"id": f"m{i}"}).encode() for i in range(10)])
        async with daemon(messages, receiver):
            await wait_for(lambda: messages.pending() == 0, 30)
        assert len(messages.rows("out")) == 10 and len(messages.lines("out")) == 10
        dead = messages.dead_letters("out")
        assert len(dead) == 10
        assert {d.reason for d in dead} == {"webhook answered 400: nope: 400"}
        assert {d.source for d in dead} == {lane_key(messages.queues["out"], "webhook")}
        assert [json.loads(d.payload_bytes)["id"] for d in dead] == [f"m{i}" for i in range(10)]

    async def test_a_requeued_batch_goes_to_the_writer_that_refused_it_only(
        self, pg_messages: Messages, receiver: Receiver
    ) -> None:
        messages = pg_messages
        receiver.plan = ["400"]
        messages.push("out", *[json.dumps({"id": f"m{i}"}).encode() for i in range(10)])
        async with daemon(messages, receiver) as running:
            await wait_for(lambda: len(messages.dead_letters("out")) == 10, 30)
            # The receiver is fixed: the operator requeues what it refused.
            outcome = await running.quarantines["messages"].requeue(Selection(all=True))
            assert (outcome.done, outcome.refused) == (10, [])
            await wait_for(lambda: len(receiver.delivered()) == 1, 30)
            await wait_for(lambda: messages.pending() == 0, 30)
        assert messages.dead_letters("out") == []
        assert delivered_tokens(receiver, "out") == [f"m{i}" for i in range(10)]
        # The database and the file had it already and never got it again.
        assert len(messages.rows("out")) == 10 and len(messages.lines("out")) == 10

    async def test_shutdown_is_not_held_by_a_hanging_webhook(
        self, pg_messages: Messages, receiver: Receiver
    ) -> None:
        """The retry loop and the final flush are bounded: the daemon stops; the
        webhook's batch stays in Redis for the next start."""
        messages = pg_messages
        receiver.default = "hang"
        messages.push("in", b'{"id": "m0"}')
        with trio.fail_after(60):
            async with daemon(messages, receiver, webhook_timeout="1s"):
                await wait_for(lambda: receiver.hanging >= 1, 30)
        assert messages.pending() == 1
        assert len(messages.rows("in")) == 1


class TestFlush:
    """``syncd flush messages``: the seed's manualSync, also while paused."""

    async def test_flush_moves_everything_and_says_so(
        self, pg_messages: Messages, receiver: Receiver
    ) -> None:
        messages = pg_messages
        async with daemon(messages, receiver) as d:
            runner = d.runner("messages")
            runner.pause()
            messages.push("in", *[b'{"id": "i%d"}' % i for i in range(30)])
            messages.push("out", *[b'{"id": "o%d"}' % i for i in range(20)], b"")
            result = await runner.flush()
            assert messages.pending() == 0
        assert result.items == 3 * 50 and result.dead_lettered == 1
        assert result.detail["processedCount"] == 150
        assert result.detail["inProcessed"] == 90 and result.detail["outProcessed"] == 60
        assert result.detail["writers"] == {"database": 50, "file": 50, "webhook": 50}
        assert result.detail["duration"] >= 0
        assert delivered_tokens(receiver, "in") == [f"i{i}" for i in range(30)]


class TestRefusedByTheDatabase:
    """JSON the database cannot store is dead-lettered for that writer only, with its reason."""

    async def test_postgres_refuses_nul_and_lone_surrogates(
        self, pg_messages: Messages, receiver: Receiver
    ) -> None:
        messages = pg_messages
        items = [b'{"id": "m%d"}' % i for i in range(200)]
        items[5] = b'{"id": "m5", "a": "nul \\u0000"}'
        items[150] = b'{"id": "m150", "a": "\\ud800"}'
        items.append(b"raw text with a nul \x00 in it")
        messages.push("in", *items)
        async with daemon(messages, receiver, batch_size=500):
            await wait_for(lambda: messages.pending() == 0, 30)
        rows = messages.rows("in")
        assert len(rows) == 198
        assert [r[2] for r in rows] == [p for p in range(201) if p not in (5, 150, 200)]
        dead = messages.dead_letters("in")
        assert len(dead) == 3
        assert all(d.reason.startswith("database refused the message: ") for d in dead)
        assert {d.source for d in dead} == {lane_key(messages.queues["in"], "database")}
        assert len(messages.lines("in")) == 201
        assert len(delivered_tokens(receiver, "in")) == 201


class TestDatabaseAlone:
    """With the database writer alone, messages go straight from the intake to SQL,
    after whatever an earlier configuration left in the writer's list."""

    async def test_leftovers_of_a_writer_list_go_first(
        self, pg_messages: Messages, receiver: Receiver
    ) -> None:
        messages = pg_messages
        messages.push("in", *[b'{"id": "old%d"}' % i for i in range(50)])
        async with daemon(messages, receiver) as d:
            runner = d.runner("messages")
            runner.pause()  # the writers stop; the lists keep what they were given
            await runner.flush()
        assert len(messages.rows("in")) == 50
        # An earlier configuration fanned these out but the database never got them.
        old = [b'{"id": "left%d"}' % i for i in range(30)]
        messages.env.redis.lpush(lane_key(messages.queues["in"], "database"), *old)
        messages.push("in", *[b'{"id": "new%d"}' % i for i in range(40)], b"")
        alone = messages.section(writers=["database"])
        async with run_daemon(daemon_config({"messages": alone}, {"default": messages.url}),
                              [syncd_messages]) as d:
            await wait_for(lambda: messages.pending() == 0, 30)
            worker = d.runner("messages").worker
            assert worker.direct
            await worker.backlog()
            assert worker.status()["queues"]["in"]["writers"]["database"]["waiting"] == 0
        ids = [json.loads(r[1])["id"] for r in messages.rows("in")]
        assert ids == ([f"old{i}" for i in range(50)] + [f"left{i}" for i in range(30)]
                       + [f"new{i}" for i in range(40)])
        [dead] = messages.dead_letters("in")
        assert dead.reason == "empty item" and dead.source == messages.queues["in"]

    async def test_what_only_looks_like_json_is_wrapped_as_with_every_writer(
        self, pg_messages: Messages, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Alone on PostgreSQL the writer sends objects unparsed; when JSONB
        refuses the batch, it is parsed and written again: what is no JSON
        is wrapped as raw text, what JSONB cannot hold is dead-lettered with
        the database's reason, the rest is stored once, in order."""
        caplog.set_level(logging.INFO, logger="syncd")
        messages = pg_messages
        items = [b'{"id": "m%d"}' % i for i in range(60)]
        items[3] = b"{not json}"
        items[9] = b'{"id": "m9"} {"id": "again"}'
        items[20] = b'{"id": "m20", "n": 12345678901234567890123}'
        items[30] = b'{"id": "m30", "a": "nul \\u0000"}'
        items[40] = '{"id": "m40", "emoji": "\U0001f600"}'.encode()
        messages.push("in", *items)
        alone = messages.section(writers=["database"], batch_size=100)
        async with run_daemon(daemon_config({"messages": alone}, {"default": messages.url}),
                              [syncd_messages]):
            await wait_for(lambda: messages.pending() == 0, 30)
        rows = messages.rows("in")
        assert [r[2] for r in rows] == [p for p in range(60) if p != 30]
        stored = {r[2]: json.loads(r[1]) for r in rows}
        assert stored[3]["text"] == "{not json}"
        assert stored[9]["text"] == '{"id": "m9"} {"id": "again"}'
        assert stored[20] == {"id": "m20", "n": 12345678901234567890123}
        assert stored[40] == {"id": "m40", "emoji": "\U0001f600"}
        assert all(stored[p] == {"id": f"m{p}"} for p in stored if p not in (3, 9, 20, 40))
        [dead] = messages.dead_letters("in")
        assert dead.payload_bytes == items[30]
        assert dead.reason.startswith("database refused the message: ")
        # The batch did go unparsed first, and was parsed once refused.
        assert "database refused an unparsed batch; parsing it" in caplog.messages

    @pytest.mark.parametrize("column", ["TEXT", "JSONB"])
    async def test_a_table_of_ones_own_is_asked_whether_it_parses_json(
        self, pg_messages: Messages, caplog: pytest.LogCaptureFixture, column: str
    ) -> None:
        """Into a ``message`` column of type text nothing goes unparsed: the
        database would take what only looks like JSON as it is."""
        caplog.set_level(logging.INFO, logger="syncd")
        messages = pg_messages
        table = messages.options["table"]
        with contextlib.closing(messages.env.connect()) as conn:
            conn.execute(f'ALTER TABLE "{table}" ALTER COLUMN message TYPE {column}')
            conn.commit()
        messages.push("in", b'{"id": "m0"}', b"{not json}", b'{"id": "m2"}')
        alone = messages.section(writers=["database"], create_table=False)
        async with run_daemon(daemon_config({"messages": alone}, {"default": messages.url}),
                              [syncd_messages]):
            await wait_for(lambda: messages.pending() == 0, 30)
        stored = [json.loads(r[1]) for r in messages.rows("in")]
        assert stored[0] == {"id": "m0"} and stored[2] == {"id": "m2"}
        assert stored[1]["text"] == "{not json}"
        unparsed = "database refused an unparsed batch; parsing it" in caplog.messages
        assert unparsed == (column == "JSONB")
