"""What syncd adds to BullMQ, each against real peers: npm bullmq, ganache, PostgreSQL.

Every wait is on a condition (``wait_for``), never a fixed sleep; timings
asserted are lower bounds set by the code under test (backoff delays),
never upper bounds set by the machine's speed.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import redis
import syncd_portfolio
import trio
from portfolio_support import (
    NODE_DIR,
    FlakyRPC,
    Ganache,
    Producer,
    fund,
    new_wallet,
    pg_rows,
    section,
    user_job,
)

from syncd.testing import REDIS_URL, daemon_config, run_daemon, wait_for


@asynccontextmanager
async def portfolio(prefix: str, pg_url: str, rpc_url: str, *, token: str | None = None,
                    grace: str = "5s", **overrides: Any) -> AsyncIterator[tuple[Any,
                                                                               httpx.AsyncClient]]:
    """A daemon running the portfolio plugin, and an HTTP client for its control plane."""
    cfg = daemon_config({"portfolio": section(prefix, rpc_url, **overrides)},
                        {"default": pg_url}, http=True, token=token, shutdown_grace=grace)
    async with run_daemon(cfg, [syncd_portfolio]) as daemon:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(base_url=daemon.http_binds[0], headers=headers,
                                     timeout=30) as http:
            yield daemon, http


async def job(http: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    answer = await http.get(f"/jobs/{job_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()


async def state_is(http: httpx.AsyncClient, job_id: str, *states: str) -> bool:
    return (await job(http, job_id))["state"] in states


def dead_letters(queue: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return [json.loads(raw) for raw in client.lrange(f"{{{queue}}}:dead", 0, -1)]
    finally:
        client.close()


async def add(producer: Producer, queue: str, jobs: list[dict[str, Any]]) -> list[str]:
    return await trio.to_thread.run_sync(producer.add, queue, jobs)


def metric(daemon: Any, sample: str, /, **labels: str) -> float:
    value = daemon.metrics.registry.get_sample_value(sample, labels)
    return value or 0.0


class TestPriorities:
    """high, medium, low run in that order, whatever order they were enqueued in."""

    async def test_high_before_medium_before_low(self, prefix: str, tables: str, pg_url: str,
                                                 ganache: Ganache, tokens: list[str],
                                                 producer: Producer) -> None:
        queue = f"{prefix}_q"
        order = ["low", "high", "medium", "low", "medium", "high", "medium", "low", "high"]
        ids = await add(producer, queue, [
            {"name": "token-metadata", "data": {"chainId": 1337, "tokens": tokens[:1]},
             "opts": {"priority": {"high": 1, "medium": 5, "low": 10}[p]}} for p in order])
        async with portfolio(prefix, pg_url, ganache.url, concurrency=1) as (_, http):
            await wait_for(lambda: all_done(http, ids), timeout=30)
        rows = pg_rows(pg_url, f'SELECT id FROM "{prefix}_jobs" ORDER BY finished_at')
        ran = [order[ids.index(r[0])] for r in rows]
        assert ran == ["high"] * 3 + ["medium"] * 3 + ["low"] * 3


async def all_done(http: httpx.AsyncClient, ids: list[str], state: str = "completed") -> bool:
    for job_id in ids:
        if not await state_is(http, job_id, state):
            return False
    return True


class TestRetries:
    """A failing attempt is retried with exponential backoff; the last failure is
    in BullMQ's failed set *and* in the dead letters; retry brings it back."""

    async def test_backoff_dead_letter_and_retry(self, prefix: str, tables: str, pg_url: str,
                                                 ganache: Ganache, tokens: list[str],
                                                 producer: Producer) -> None:
        queue = f"{prefix}_q"
        flaky = FlakyRPC(ganache.url)
        flaky.set("down")
        async with trio.open_nursery() as nursery:
            url = await nursery.start(flaky.serve)
            async with portfolio(prefix, pg_url, url, backoff="300ms") as (daemon, http):
                [job_id] = await add(producer, queue, [
                    {"name": "token-metadata", "data": {"chainId": 1337, "tokens": tokens}}])
                await wait_for(lambda: state_is(http, job_id, "failed"), timeout=30)
                seen = await job(http, job_id)
                assert seen["attemptsMade"] == 3
                assert "HTTP 503" in seen["failedReason"]
                times = [t for t, _ in flaky.requests]
                assert len(times) == 3
                # The seed's exponential backoff: 300 ms, then 600 ms.
                assert times[1] - times[0] >= 0.3
                assert times[2] - times[1] >= 0.6
                counts = await trio.to_thread.run_sync(producer.counts, queue)
                assert counts["failed"] == 1
                [letter] = dead_letters(queue)
                assert letter["source"] == queue
                assert "HTTP 503" in letter["reason"]
                assert json.loads(letter["payload"])["id"] == job_id
                assert pg_rows(pg_url, f'SELECT state, attempts FROM "{prefix}_jobs"') == [
                    ("failed", 3)]
                assert metric(daemon, "portfolio_job_retries_total",
                              name="token-metadata") == 2

                flaky.set("up")
                answer = await http.post(f"/jobs/{job_id}/retry")
                assert answer.status_code == 200, answer.text
                await wait_for(lambda: state_is(http, job_id, "completed"), timeout=30)
                assert dead_letters(queue) == []
                again = await http.post(f"/jobs/{job_id}/retry")
                assert again.status_code == 409
                assert (await http.post("/jobs/nope/retry")).status_code == 404
            nursery.cancel_scope.cancel()


class TestTimeout:
    """A provider that accepts and never answers: the attempt is cancelled at the
    job timeout (not the HTTP client's 10 s) and retried."""

    async def test_hung_provider(self, prefix: str, tables: str, pg_url: str,
                                 ganache: Ganache, tokens: list[str], producer: Producer) -> None:
        queue = f"{prefix}_q"
        flaky = FlakyRPC(ganache.url)
        flaky.set("hang")
        async with trio.open_nursery() as nursery:
            url = await nursery.start(flaky.serve)
            async with portfolio(prefix, pg_url, url, timeout="1s") as (daemon, http):
                [job_id] = await add(producer, queue, [
                    {"name": "token-metadata", "data": {"chainId": 1337, "tokens": tokens}}])
                await wait_for(lambda: len(flaky.requests) == 1, timeout=30)
                flaky.set("up")  # the retry gets an answer
                await wait_for(lambda: state_is(http, job_id, "completed"), timeout=30)
                seen = await job(http, job_id)
                assert seen["attemptsMade"] == 2
                assert metric(daemon, "portfolio_job_timeouts_total",
                              name="token-metadata") == 1
                assert [mode for _, mode in flaky.requests][:1] == ["hang"]
            nursery.cancel_scope.cancel()


class TestCancel:
    """DELETE /jobs/:id on one replica cancels the job running on another."""

    async def test_cancel_active_job_on_another_replica(
            self, prefix: str, tables: str, pg_url: str, ganache: Ganache, tokens: list[str],
            producer: Producer) -> None:
        queue = f"{prefix}_q"
        flaky = FlakyRPC(ganache.url)
        flaky.set("hang")
        async with trio.open_nursery() as nursery:
            url = await nursery.start(flaky.serve)
            async with portfolio(prefix, pg_url, url) as (front, http):
                # This replica takes no jobs: the other one will run it.
                assert (await http.post("/workers/pause")).json()["paused"] is True
                await wait_for(lambda: not front.runners["portfolio"].worker.taking)
                async with portfolio(prefix, pg_url, url) as (back, _):
                    [job_id] = await add(producer, queue, [
                        {"name": "token-metadata",
                         "data": {"chainId": 1337, "tokens": tokens}}])
                    running = back.runners["portfolio"].worker.active
                    await wait_for(lambda: job_id in running, timeout=30)
                    started = trio.current_time()
                    answer = await http.delete(f"/jobs/{job_id}")
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["state"] == "failed"
                    assert trio.current_time() - started < 3.0
                    seen = await job(http, job_id)
                    assert seen["failedReason"] == "cancelled"
                    assert seen["attemptsMade"] == 1
                    assert metric(back, "portfolio_job_cancellations_total",
                                  name="token-metadata") == 1
                    # Never retried: still failed after more than its first backoff.
                    await trio.sleep(0.5)
                    assert (await job(http, job_id))["state"] == "failed"
                    assert dead_letters(queue) == []
                    assert len(flaky.requests) == 1
            nursery.cancel_scope.cancel()


class TestCircuit:
    """The breaker opens after consecutive failures (jobs then fail fast, with no
    request), half-opens after the cool-down, and closes on success."""

    async def test_opens_and_closes(self, prefix: str, tables: str, pg_url: str,
                                    ganache: Ganache, tokens: list[str],
                                    producer: Producer) -> None:
        queue = f"{prefix}_q"
        flaky = FlakyRPC(ganache.url)
        flaky.set("down")
        async with trio.open_nursery() as nursery:
            url = await nursery.start(flaky.serve)
            async with portfolio(prefix, pg_url, url, breaker={"failures": 2, "cooldown": "2s"},
                                 attempts=10) as (daemon, http):
                [job_id] = await add(producer, queue, [
                    {"name": "token-metadata", "data": {"chainId": 1337, "tokens": tokens}}])

                async def failed_fast() -> bool:
                    return "circuit open" in ((await job(http, job_id))["failedReason"] or "")

                await wait_for(failed_fast, timeout=30)
                breakers = (await http.get("/workers")).json()["this"]["circuits"]
                assert breakers[0]["state"] == "open"
                assert metric(daemon, "portfolio_circuit_state", endpoint=url,
                              state="open") == 1
                down_requests = len(flaky.requests)
                assert down_requests == 2  # the failing attempt after them made none
                flaky.set("up")
                await wait_for(lambda: state_is(http, job_id, "completed"), timeout=30)
                breakers = (await http.get("/workers")).json()["this"]["circuits"]
                assert breakers[0]["state"] == "closed"
                assert metric(daemon, "portfolio_circuit_opened_total", endpoint=url) >= 1
            nursery.cancel_scope.cancel()


class TestBadInput:
    """Bad input fails at once with the reason, is dead-lettered, never crashes the worker."""

    async def test_bad_jobs_fail_at_once(self, prefix: str, tables: str, pg_url: str,
                                         ganache: Ganache, tokens: list[str],
                                         producer: Producer) -> None:
        queue = f"{prefix}_q"
        wallet = new_wallet()
        bad = [
            {"name": "portfolio-sink", "data": {}},
            {"name": "portfolio-sync", "data": {"userId": "u", "wallets": [
                {"chainId": 1337, "address": "0x123"}]}},
            {"name": "portfolio-sync", "data": {"wallets": []}},
            {"name": "portfolio-sync", "data": user_job("u", [wallet], [], chain=99)},
        ]
        # "Tokens" with no contract: the chain answers, the answer is no
        # token. More of them than the circuit's failure threshold: they
        # must not open it for the good job (a chaos run found they did).
        no_code = [{"name": "portfolio-sync", "data": user_job(
            f"u{n}", [wallet], [f"0x{'dead' * 9}{n:04x}"])} for n in range(6)]
        bad += no_code
        good = {"name": "portfolio-sync", "data": user_job("u", [wallet], tokens)}
        ids = await add(producer, queue, [*bad, good])
        failed, done = ids[:len(bad)], ids[len(bad)]
        async with portfolio(prefix, pg_url, ganache.url) as (_, http):
            await wait_for(lambda: all_done(http, failed, "failed"), timeout=30)
            await wait_for(lambda: state_is(http, done, "completed"), timeout=30)
            reasons = [(await job(http, i))["failedReason"] for i in failed]
            attempts = [(await job(http, i))["attemptsMade"] for i in failed]
            circuits = {c["state"] for c in (await http.get("/workers")).json()["this"]["circuits"]}
        assert "unknown job name 'portfolio-sink'" in reasons[0]
        assert "'0x123' is not an address" in reasons[1]
        assert "userId" in reasons[2]
        assert "chain 99 is not configured" in reasons[3]
        assert all("expected an ABI string, got 0 bytes" in r for r in reasons[4:]), reasons
        assert attempts == [1] * len(bad)  # bad input is not retried
        assert circuits == {"closed"}
        assert sorted(json.loads(d["payload"])["id"] for d in dead_letters(queue)) == sorted(
            failed)


class TestHttpApi:
    """The seed's API: 201 with the state, 400 with a reason, 404, the token."""

    async def test_jobs_api(self, prefix: str, tables: str, pg_url: str, ganache: Ganache,
                            tokens: list[str], producer: Producer) -> None:
        queue = f"{prefix}_q"
        async with portfolio(prefix, pg_url, ganache.url, token="s3cret") as (daemon, http):
            body = {"name": "portfolio-sync", "data": user_job("bob", [new_wallet()], tokens),
                    "priority": "high"}
            async with httpx.AsyncClient(base_url=daemon.http_binds[0]) as anonymous:
                assert (await anonymous.post("/jobs", json=body)).status_code == 401
                assert (await anonymous.get("/workers")).status_code == 200
            created = await http.post("/jobs", json=body)
            assert created.status_code == 201, created.text
            job_id = created.json()["id"]
            await wait_for(lambda: state_is(http, job_id, "completed"), timeout=30)
            seen = await job(http, job_id)
            assert seen["returnvalue"]["balances"] == 4
            for bad, reason in [
                (b"{", "not JSON"),
                (json.dumps({"name": "nope", "data": {}}).encode(), "unknown job name"),
                (json.dumps({**body, "priority": "urgent"}).encode(), "priority"),
                (json.dumps({**body, "delay": "soon"}).encode(), "delay"),
                (json.dumps({**body, "attempts": 0}).encode(), "attempts"),
                (json.dumps({**body, "colour": 1}).encode(), "unknown field"),
            ]:
                answer = await http.post("/jobs", content=bad)
                assert answer.status_code == 400, (bad, answer.text)
                assert reason in answer.json()["error"]
            assert (await http.get("/jobs/404")).status_code == 404
            assert (await http.delete("/jobs/404")).status_code == 404

            later = await http.post("/jobs", json={**body, "delay": "1h"})
            assert later.json()["state"] == "delayed"
            removed = await http.delete(f"/jobs/{later.json()['id']}")
            assert removed.json()["state"] == "removed"
            assert (await http.get(f"/jobs/{later.json()['id']}")).json()["state"] == "removed"

            workers = (await http.get("/workers")).json()
            assert workers["syncd"][0]["instance"] == daemon.config.instance
            names = await trio.to_thread.run_sync(producer.workers, queue)
            assert any(name.endswith(f":w:syncd-{daemon.config.instance}") for name in names)
            # A Node worker of the same queue is listed too.
            node_worker = await trio.lowlevel.open_process(
                ["node", str(NODE_DIR / "peer.js"), "work", queue, "1", "1000000"],
                env={**os.environ, "REDIS_URL": REDIS_URL})
            try:
                async def node_listed() -> bool:
                    listed = (await http.get("/workers")).json()["workers"]
                    return any(w["worker"] is None for w in listed)

                await wait_for(node_listed, timeout=30)
            finally:
                node_worker.kill()
                await node_worker.wait()

            paused = await http.post("/workers/pause", params={"scope": "queue"})
            assert paused.json() == {"scope": "queue", "queue": queue, "paused": True}
            await http.post("/workers/resume", params={"scope": "queue"})
            exposition = (await http.get("/metrics")).text
            assert 'portfolio_jobs_total{name="portfolio-sync",outcome="completed"' in exposition
            assert "portfolio_job_duration_seconds_bucket" in exposition


class TestShutdown:
    """Graceful shutdown: jobs that finish within the grace finish; the others go
    back to wait, none left in active and none failed."""

    async def test_nothing_left_active(self, prefix: str, tables: str, pg_url: str,
                                       ganache: Ganache, tokens: list[str],
                                       producer: Producer) -> None:
        queue = f"{prefix}_q"
        flaky = FlakyRPC(ganache.url)
        flaky.set("hang")
        async with trio.open_nursery() as nursery:
            url = await nursery.start(flaky.serve)
            async with portfolio(prefix, pg_url, url, grace="3s") as (_, http):
                ids = await add(producer, queue, [
                    {"name": "token-metadata", "data": {"chainId": 1337, "tokens": [t]}}
                    for t in tokens])
                await wait_for(lambda: len(flaky.requests) == 3, timeout=30)
                counts = await trio.to_thread.run_sync(producer.counts, queue)
                assert counts["active"] == 3
            counts = await trio.to_thread.run_sync(producer.counts, queue)
            assert counts["active"] == 0
            assert counts["failed"] == 0
            assert counts["waiting"] == 3
            states = pg_rows(pg_url, f'SELECT state, attempts FROM "{prefix}_jobs"')
            assert states == [("waiting", 0)] * 3
            # They run again, in full, on the next start.
            flaky.set("up")
            async with portfolio(prefix, pg_url, url) as (_, http):
                await wait_for(lambda: all_done(http, ids), timeout=30)
            nursery.cancel_scope.cancel()

    async def test_running_jobs_finish_within_grace(
            self, prefix: str, tables: str, pg_url: str, ganache: Ganache, tokens: list[str],
            producer: Producer) -> None:
        queue = f"{prefix}_q"
        wallet = new_wallet()
        fund(ganache, tokens, wallet, 3)
        flaky = FlakyRPC(ganache.url)
        flaky.delay = 0.5
        async with trio.open_nursery() as nursery:
            url = await nursery.start(flaky.serve)
            async with portfolio(prefix, pg_url, url, grace="10s"):
                await add(producer, queue, [
                    {"name": "portfolio-sync", "data": user_job("carol", [wallet], tokens)}])
                await wait_for(lambda: len(flaky.requests) >= 1, timeout=30)
            counts = await trio.to_thread.run_sync(producer.counts, queue)
            assert counts["completed"] == 1, counts
            assert counts["active"] == 0
            nursery.cancel_scope.cancel()


class TestBulk:
    """bulk-user-sync fans out one portfolio-sync per user, with ids that a
    re-run cannot duplicate; chain-sync reads one chain."""

    async def test_fan_out(self, prefix: str, tables: str, pg_url: str, ganache: Ganache,
                           tokens: list[str], producer: Producer) -> None:
        queue = f"{prefix}_q"
        users = [user_job(f"bulk{i}", [new_wallet()], tokens[:1]) for i in range(3)]
        chain = {"userId": "chainy", "chainId": 1337, "wallets": [new_wallet()],
                 "tokens": tokens}
        [bulk, chained] = await add(producer, queue, [
            {"name": "bulk-user-sync", "data": {"users": users}, "opts": {"priority": 5}},
            {"name": "chain-sync", "data": chain}])
        async with portfolio(prefix, pg_url, ganache.url) as (_, http):
            await wait_for(lambda: state_is(http, bulk, "completed"), timeout=30)
            children = (await job(http, bulk))["returnvalue"]["children"]
            assert children == [f"{bulk}-u{i}" for i in range(3)]
            await wait_for(lambda: all_done(http, [*children, chained]), timeout=30)
            # The same fan-out again (a retried parent) adds nobody.
            await add(producer, queue, [{"name": "portfolio-sync", "data": users[0],
                                         "opts": {"jobId": children[0]}}])
            counts = await trio.to_thread.run_sync(producer.counts, queue)
            assert counts["completed"] == 5 and counts["waiting"] == 0, counts
        rows = pg_rows(pg_url, f'SELECT user_id, count(*) FROM "{prefix}_balances" '
                               'GROUP BY user_id ORDER BY user_id')
        assert rows == [("bulk0", 2), ("bulk1", 2), ("bulk2", 2), ("chainy", 4)]
