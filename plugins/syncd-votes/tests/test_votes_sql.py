"""The votes plugin in a real daemon, in-process, against real Redis and databases."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime
from typing import Any

import pymysql
import pytest
import syncd_votes
import trio
import trio.lowlevel
from votes_support import TcpProxy, Votes

import syncd
from syncd.testing import daemon_config, run_daemon, wait_for


def daemon(votes: Votes, url: str | None = None, *, redis_url: str | None = None,
           **options: Any) -> Any:
    config = daemon_config({"votes": votes.section(**options)}, {"default": url or votes.url})
    if redis_url:
        config["redis"] = {"url": redis_url}
    return run_daemon(config, [syncd_votes])


async def drained(votes: Votes, produced: int, timeout: float = 30) -> syncd.Tally:
    await wait_for(lambda: votes.pending() == 0, timeout)
    tally = votes.workload.tally(votes.env, produced)
    assert tally.ok, tally
    return tally


class TestDrain:
    """Every valid vote once in SQL, every malformed one dead-lettered."""

    async def test_concurrent_producers(self, mysql_votes: Votes) -> None:
        votes, per, producers = mysql_votes, 2500, 4
        async with daemon(votes) as d:
            async with trio.open_nursery() as nursery:
                for n in range(producers):
                    nursery.start_soon(trio.to_thread.run_sync,
                                       votes.workload.produce, votes.env, n * per, per)
            await drained(votes, per * producers)
            runner = d.runner("votes")
            # Reported just after the ack that emptied the queue.
            await wait_for(lambda: runner.items_synced == per * producers * 49 // 50)
            assert runner.dead_lettered == per * producers // 50

    async def test_portable(self, votes: Votes) -> None:
        votes.workload.produce(votes.env, 0, 2000)
        async with daemon(votes):
            await drained(votes, 2000)
        rows = votes.rows("WHERE voter_id = 'v1'")
        assert rows == [("b", "v1", datetime(2024, 1, 1, 0, 0, 1))]

    async def test_sqlite(self, sqlite_votes: Votes) -> None:
        votes = sqlite_votes
        votes.workload.produce(votes.env, 0, 1000)
        async with daemon(votes):
            await drained(votes, 1000)

    async def test_metrics(self, mysql_votes: Votes) -> None:
        votes = mysql_votes
        votes.workload.produce(votes.env, 0, 1000)
        async with daemon(votes) as d:
            await drained(votes, 1000)
            await wait_for(lambda: d.runner("votes").items_synced == 980)
            assert await d.runner("votes").worker.backlog() == 0  # polled every 5 s
            text = d.metrics.exposition().decode()
        assert 'votes_processed_total{vote="a"} 200.0' in text
        assert "vote_process_duration_seconds_count" in text
        assert "votes_queue_length 0.0" in text
        assert "votes_dead_letters 20.0" in text


BIG = "x" * (1 << 20)
VALID: list[dict[str, Any]] = [
    {"vote": "🗳️", "voter_id": "مرحبا بالعالم", "timestamp": "2024-02-29T23:59:59+05:30"},
    {"vote": "a", "voter_id": "'); DROP TABLE votes; --", "timestamp": 1709251199},
    {"vote": "b", "voter_id": "Robert\\'); \"`%s %%", "timestamp": 1709251199000},
    {"vote": "\u202eRTL", "voter_id": "same"},
    {"vote": "\u202eRTL", "voter_id": "same"},  # pushed twice: two votes
]
INVALID: list[tuple[bytes, str]] = [
    (b"not json", "not JSON"),
    (b'{"vote": "a"', "not JSON"),
    (b"[]", "not a JSON object"),
    (b"\xff\xfe\x00", "not valid UTF-8"),
    (json.dumps({"vote": 5, "voter_id": "x"}).encode(), "'vote' must be a string"),
    (json.dumps({"vote": "a"}).encode(), "missing field 'voter_id'"),
    (json.dumps({"voter_id": "x"}).encode(), "missing field 'vote'"),
    (json.dumps({"vote": "a" * 11, "voter_id": "x"}).encode(), "more than 10"),
    (json.dumps({"vote": "a", "voter_id": "x", "timestamp": "soon"}).encode(), "ISO 8601"),
    (json.dumps({"vote": "a", "voter_id": "x", "pad": BIG}).encode(), "max_item_bytes"),
]
NUL = {"vote": "a", "voter_id": "nul\x00byte"}


class TestMalformed:
    """A hostile corpus: stored verbatim or dead-lettered with its reason, never stuck."""

    async def test_corpus(self, votes: Votes) -> None:
        items: list[bytes] = []
        for _ in range(3):  # spread over batches, mixed with good votes
            items += [json.dumps(v).encode() for v in VALID]
            items += [raw for raw, _ in INVALID]
            items.append(json.dumps(NUL).encode())
        votes.push(*items)
        async with daemon(votes, batch_size=7):
            await wait_for(lambda: votes.pending() == 0, 30)
        rows = votes.rows()
        stored = {(vote, voter) for vote, voter, _ in rows}
        for v in VALID:
            assert (v["vote"], v["voter_id"]) in stored
        assert sum(1 for _, voter, _ in rows if voter == "same") == 6
        assert ("🗳️", "مرحبا بالعالم", datetime(2024, 2, 29, 18, 29, 59)) in rows
        assert ("a", "'); DROP TABLE votes; --", datetime(2024, 2, 29, 23, 59, 59)) in rows

        letters = votes.dead_letters()
        reasons = [letter.reason for letter in letters]
        for raw, reason in INVALID:
            found = [d for d in letters if d.payload_bytes == raw]
            assert len(found) == 3, (raw[:40], reasons)
            assert all(reason in d.reason for d in found), (reason, found[0].reason)
            assert all(d.plugin == "votes" and d.at > 0 for d in found)
        nul_rows = [r for r in rows if r[1] == NUL["voter_id"]]
        nul_dead = [d for d in letters if d.payload_bytes == json.dumps(NUL).encode()]
        if votes.env.dialect == "postgresql":
            # PostgreSQL refuses NUL in text: isolated from its batch, which still committed.
            assert nul_rows == [] and len(nul_dead) == 3
            assert all("database rejected the row" in d.reason and "NUL" in d.reason
                       for d in nul_dead)
        else:
            assert len(nul_rows) == 3 and nul_dead == []
        assert len(rows) == 3 * len(VALID) + len(nul_rows)
        assert len(letters) == 3 * len(INVALID) + len(nul_dead)


    async def test_allowed_votes(self, mysql_votes: Votes) -> None:
        votes = mysql_votes
        votes.push({"vote": "yes", "voter_id": "1"}, {"vote": "maybe", "voter_id": "2"},
                   {"vote": "no", "voter_id": "3"})
        async with daemon(votes, allowed_votes=["yes", "no"]) as d:
            await wait_for(lambda: votes.pending() == 0, 10)
            # Counted just after the ack that emptied the queue.
            await wait_for(lambda: b'votes_processed_total{vote="no"} 1.0'
                           in d.metrics.exposition())
            text = d.metrics.exposition().decode()
        assert sorted(r[:2] for r in votes.rows()) == [("no", "3"), ("yes", "1")]
        assert [d.reason for d in votes.dead_letters()] == [
            "vote 'maybe' is not one of allowed_votes"]
        assert 'votes_processed_total{vote="yes"} 1.0' in text


class TestFlush:
    """flush() drains what was queued when it started, and not more, beside run()."""

    async def test_flush_while_paused_and_bounded(self, mysql_votes: Votes) -> None:
        votes = mysql_votes
        async with daemon(votes, batch_size=100) as d:
            runner = d.runner("votes")
            runner.pause()
            # The lanes park at their next batch boundary; one still waiting
            # for votes leaves what it takes in its processing list, which the
            # flush finishes first: no need to wait for them to park.
            votes.workload.produce(votes.env, 0, 1000)
            result = await runner.flush()
            assert result.items + result.dead_lettered == 1000
            assert votes.pending() == 0

            # A producer that never stops cannot make flush endless.
            stop = trio.Event()
            produced = 1000

            async def produce() -> None:
                nonlocal produced
                while not stop.is_set():
                    await trio.to_thread.run_sync(
                        votes.workload.produce, votes.env, produced, 200)
                    produced += 200
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce)
                await wait_for(lambda: produced >= 1400)  # the producer is going
                with trio.fail_after(60):  # an endless flush would never return
                    await runner.flush()
                stop.set()
            runner.resume()
            # However much the endless producer added meanwhile, it all goes.
            await wait_for(lambda: votes.pending() == 0, 120, describe=votes.pending)
        tally = votes.workload.tally(votes.env, produced)
        assert tally.ok, tally

    async def test_flush_races_run(self, mysql_votes: Votes) -> None:
        votes = mysql_votes
        async with daemon(votes, batch_size=50) as d:
            runner = d.runner("votes")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync,
                                   votes.workload.produce, votes.env, 0, 5000)
                for _ in range(20):
                    await runner.flush()
            await drained(votes, 5000)


class TestOutages:
    """The database killed or away: nothing lost, caught up afterwards."""

    async def test_connections_killed_and_server_away(
        self, mysql_votes: Votes, mysql_url: str
    ) -> None:
        votes = mysql_votes
        proxy = TcpProxy(("127.0.0.1", 3306))
        admin = votes.env.connect()
        admin.autocommit(True)
        produced = 0

        async def produce(count: int) -> None:
            nonlocal produced
            await trio.to_thread.run_sync(votes.workload.produce, votes.env, produced, count)
            produced += count

        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)
            url = mysql_url.replace(":3306/", f":{proxy.port}/")
            async with daemon(votes, url, batch_size=100) as d:
                runner = d.runner("votes")
                await produce(3000)
                # KILL the daemon's sessions (found by the proxy's ports) mid-run.
                for _ in range(3):
                    # A port of a session just killed may linger until the
                    # proxy notices: retry until a live session was killed.
                    await wait_for(lambda: kill_sessions(admin, proxy.upstream_ports))
                    await produce(500)
                    await trio.sleep(0.2)
                # Away for a while: refused connections, then back on the same port.
                proxy.stop()
                await produce(2000)
                await wait_for(lambda: runner.state == "failed", describe=runner.status)
                ready = await d.check_backends()
                assert not ready["database:default"]["ok"]
                assert votes.pending() > 0
                await nursery.start(proxy.serve)
                await drained(votes, produced, timeout=40)
                await wait_for(lambda: runner.state == "running", describe=runner.status)
                assert runner.restarts >= 1
            proxy.stop()
        admin.close()


    async def test_redis_connections_dropped(self, mysql_votes: Votes) -> None:
        votes = mysql_votes
        proxy = TcpProxy(("127.0.0.1", 6379))
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)
            async with daemon(votes, redis_url=f"redis://127.0.0.1:{proxy.port}/0",
                              batch_size=100) as d:
                votes.workload.produce(votes.env, 0, 2000)
                await trio.sleep(0.1)
                for round_ in range(2):  # dropped mid-run, then away for a while
                    proxy.stop()
                    votes.workload.produce(votes.env, 2000 + round_ * 1000, 1000)
                    await trio.sleep(1.0 * round_)
                    await nursery.start(proxy.serve)
                    await trio.sleep(0.2)
                await drained(votes, 4000, timeout=40)
                await wait_for(lambda: d.runner("votes").state == "running")
            proxy.stop()


def kill_sessions(admin: Any, ports: set[int]) -> int:
    cur = admin.cursor()
    cur.execute("SELECT ID, HOST FROM information_schema.PROCESSLIST")
    ids = [pid for pid, host in cur.fetchall()
           if host and host.rpartition(":")[2].isdigit() and int(host.rpartition(":")[2]) in ports]
    for pid in ids:
        with contextlib.suppress(pymysql.MySQLError):  # already gone
            cur.execute(f"KILL {int(pid)}")
    return len(ids)


class TestConfig:
    """A wrong section fails at start-up, naming the key."""

    @pytest.mark.parametrize(("options", "key"), [
        ({"batch_size": 0}, "plugins.votes.batch_size"),
        ({"table": "votes; DROP"}, "plugins.votes.table"),
        ({"allowed_votes": ["way too long"]}, "plugins.votes.allowed_votes"),
        ({"dead_letter": "votes"}, "plugins.votes.dead_letter"),
        ({"lanes": 0}, "plugins.votes.lanes"),
        ({"batch_max_wait": "soon"}, "plugins.votes.batch_max_wait"),
        ({"queu": "x"}, "plugins.votes.queu"),
    ])
    async def test_bad_option(self, options: dict[str, Any], key: str) -> None:
        config = daemon_config({"votes": options}, {"default": "sqlite:///:memory:"})
        with pytest.raises(syncd.ConfigError) as info:
            async with run_daemon(config, [syncd_votes]):
                pass
        assert info.value.key == key
