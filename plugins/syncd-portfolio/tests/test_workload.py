"""The chaos workload's tally counts what it claims to (real Redis, PostgreSQL, responder).

CI's chaos smoke (``tests/test_harness_smoke.py``) runs the workload against
real daemons and only asks whether the tally says ok; a tally that could
not see a loss or a duplicate would pass it too. So here syncd's side is
played by hand, right and then wrong in each way the tally must catch,
with the workload's own producer, responder and tables.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from syncd_portfolio.responder import balance
from syncd_portfolio.workload import (
    BULL,
    NOT_A_TOKEN,
    expected_jobs,
    item,
    portfolio_workload,
)

import syncd
from syncd.harness.env import clear_keys, open_env
from syncd.testing import PG_URL, REDIS_URL

PRODUCED = 120  # bad: j49, j99; bulk-user-sync: j13, j113 (children j13-u0, j13-u1...)


@pytest.fixture(name="run")
def _run() -> Iterator[tuple[syncd.Workload, syncd.WorkloadEnv]]:
    prefix = f"t_{uuid.uuid4().hex[:10]}"
    workload = portfolio_workload(prefix)
    with open_env(PG_URL, prefix, REDIS_URL) as env:
        workload.setup(env)
        try:
            yield workload, env
        finally:
            assert workload.teardown is not None
            workload.teardown(env)
            clear_keys(env.redis, prefix)


def _tables(workload: syncd.Workload) -> tuple[str, str]:
    return workload.options["jobs_table"], workload.options["balances_table"]


def play_syncd(workload: syncd.Workload, env: syncd.WorkloadEnv) -> None:
    """What a correct run leaves: every job's outcome, balances, BullMQ sets, dead letters."""
    jobs_table, balances_table = _tables(workload)
    valid, bad = expected_jobs(PRODUCED)
    queue = workload.options["queue"]
    with env.connection() as conn:
        cur = conn.cursor()
        cur.execute(f'CREATE TABLE "{jobs_table}" (id TEXT PRIMARY KEY, state TEXT)')
        cur.execute(f'CREATE TABLE "{balances_table}" (user_id TEXT, chain_id BIGINT,'
                    " wallet TEXT, token TEXT, balance NUMERIC(78, 0), decimals INTEGER)")
        for jid, rows in valid.items():
            cur.execute(f'INSERT INTO "{jobs_table}" VALUES (%s, %s)', (jid, "completed"))
            for (user, chain, wallet, token), (amount, decimals) in rows:
                cur.execute(f'INSERT INTO "{balances_table}" VALUES (%s, %s, %s, %s, %s, %s)',
                            (user, chain, wallet, token, amount, decimals))
        for jid in bad:
            cur.execute(f'INSERT INTO "{jobs_table}" VALUES (%s, %s)', (jid, "failed"))
        conn.commit()
    env.redis.zadd(f"{BULL}:{queue}:completed", dict.fromkeys(valid, 1))
    env.redis.zadd(f"{BULL}:{queue}:failed", dict.fromkeys(bad, 1))
    for jid in sorted(bad):
        dead_letter(workload, env, jid)


def dead_letter(workload: syncd.Workload, env: syncd.WorkloadEnv, jid: str) -> None:
    key = workload.options["dead_letter"]
    letter = syncd.DeadLetter(key, f'{{"id":"{jid}","name":"portfolio-sync"}}', "bad",
                              "portfolio", source=workload.options["queue"])
    env.redis.lpush(key, letter.encode())


class TestProduce:
    """Jobs reach the BullMQ queue under their item's id, the bad ones among them."""

    def test_jobs_are_in_bullmq(self, run: tuple[syncd.Workload, syncd.WorkloadEnv]) -> None:
        workload, env = run
        workload.produce(env, 0, PRODUCED)
        assert workload.pending(env) == PRODUCED
        queue = workload.options["queue"]
        stored = env.redis.hgetall(f"{BULL}:{queue}:j49")
        assert stored[b"name"] == b"portfolio-sync"
        assert b"not-an-address" in stored[b"data"]
        assert env.redis.hget(f"{BULL}:{queue}:j13", "name") == b"bulk-user-sync"
        # Item numbers decide the items: the same number, the same job.
        assert item(149) == item(149) and NOT_A_TOKEN in str(item(149)["data"]["tokens"])


class TestTally:
    """Nothing done is all lost; a correct run is ok; each kind of wrong is seen."""

    def test_nothing_ran(self, run: tuple[syncd.Workload, syncd.WorkloadEnv]) -> None:
        workload, env = run
        jobs_table, balances_table = _tables(workload)
        with env.connection() as conn:
            conn.cursor().execute(f'CREATE TABLE "{jobs_table}" (id TEXT, state TEXT)')
            conn.cursor().execute(
                f'CREATE TABLE "{balances_table}" (user_id TEXT, chain_id BIGINT, wallet TEXT,'
                " token TEXT, balance NUMERIC(78, 0), decimals INTEGER)")
            conn.commit()
        tally = workload.tally(env, PRODUCED)
        # 120 items: 2 bad, two bulks of two users each (their children are jobs too).
        assert (tally.expected, tally.expected_dead, tally.in_sql) == (122, 2, 0)
        assert tally.lost == 124 and not tally.ok

    def test_a_correct_run(self, run: tuple[syncd.Workload, syncd.WorkloadEnv]) -> None:
        workload, env = run
        play_syncd(workload, env)
        tally = workload.tally(env, PRODUCED)
        assert tally.ok, tally
        assert (tally.in_sql, tally.dead_lettered) == (122, 2)

    def test_a_wrong_balance_is_a_lost_job(
            self, run: tuple[syncd.Workload, syncd.WorkloadEnv]) -> None:
        workload, env = run
        play_syncd(workload, env)
        _, balances_table = _tables(workload)
        with env.connection() as conn:
            conn.cursor().execute(
                f'UPDATE "{balances_table}" SET balance = balance + 1'
                " WHERE user_id = 'u5' AND token = 'native'")
            conn.commit()
        tally = workload.tally(env, PRODUCED)
        assert (tally.lost, tally.in_sql, tally.duplicates) == (1, 121, 0)

    def test_completed_in_sql_only_is_lost(
            self, run: tuple[syncd.Workload, syncd.WorkloadEnv]) -> None:
        """A record says completed, but BullMQ never heard of it: still running there."""
        workload, env = run
        play_syncd(workload, env)
        env.redis.zrem(f"{BULL}:{workload.options['queue']}:completed", "j13-u1")
        assert workload.tally(env, PRODUCED).lost == 1

    def test_two_dead_letters_are_a_duplicate(
            self, run: tuple[syncd.Workload, syncd.WorkloadEnv]) -> None:
        workload, env = run
        play_syncd(workload, env)
        dead_letter(workload, env, "j49")
        tally = workload.tally(env, PRODUCED)
        assert (tally.duplicates, tally.dead_lettered, tally.lost) == (1, 3, 0)
        assert not tally.ok

    def test_completed_and_failed_is_a_duplicate(
            self, run: tuple[syncd.Workload, syncd.WorkloadEnv]) -> None:
        workload, env = run
        play_syncd(workload, env)
        env.redis.zadd(f"{BULL}:{workload.options['queue']}:failed", {"j7": 1})
        assert workload.tally(env, PRODUCED).duplicates == 1

    def test_a_bad_job_completed_is_too_much_in_sql(
            self, run: tuple[syncd.Workload, syncd.WorkloadEnv]) -> None:
        workload, env = run
        play_syncd(workload, env)
        jobs_table, _ = _tables(workload)
        with env.connection() as conn:
            conn.cursor().execute(
                f"UPDATE \"{jobs_table}\" SET state = 'completed' WHERE id = 'j99'")
            conn.commit()
        tally = workload.tally(env, PRODUCED)
        assert (tally.in_sql, tally.duplicates) == (123, 1)


class TestResponder:
    """The chains answer as the tally computes: the same balance for the same pair."""

    def test_balances_and_batches(self, run: tuple[syncd.Workload, syncd.WorkloadEnv]) -> None:
        workload, _ = run
        url = workload.options["chains"][1]["rpc_url"]
        wallet = "0x" + "ab" * 20
        answers = httpx.post(url, json=[
            {"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance", "params": [wallet, "0x1"]},
            {"jsonrpc": "2.0", "id": 2, "method": "eth_chainId", "params": []},
            {"jsonrpc": "2.0", "id": 3, "method": "eth_nope", "params": []},
        ], timeout=10).json()
        assert int(answers[0]["result"], 16) == balance(wallet, "native")
        assert answers[1]["result"] == "0x1"
        assert answers[2]["error"]["code"] == -32601
