"""Portfolio: syncd's BullMQ worker against npm BullMQ's own, and a real sync against ganache.

Run: ``.venv/bin/python bench/portfolio_bench.py [--jobs 5000] [--users 1000] [--rounds 3]``
(``./scripts/bench`` runs it after ``syncd bench``; ``./scripts/bench portfolio
[ARGS]`` runs only this).

1. **No-op jobs.** ``--jobs`` jobs are enqueued by npm bullmq, then drained
   by (a) the real daemon in this process with only the portfolio plugin
   (concurrency 10, the defaults) and (b) an npm BullMQ ``Worker`` with an
   empty processor (concurrency 10), on the same Redis, alternately, for
   ``--rounds`` rounds. The syncd job is a ``token-metadata`` job with no
   tokens: the whole path runs (validation, its Trio task and cancel scope,
   its outcome committed to ``portfolio_jobs`` before BullMQ is told) except
   calls to a provider. Both rates come from BullMQ's own timestamps: jobs
   / (last ``finishedOn`` - first ``processedOn``), so start-up is outside
   both, and Node's worker does nothing at all per job.
2. **Portfolio sync.** ``--users`` ``portfolio-sync`` jobs, each 2 wallets
   and 3 ERC-20 tokens of our own on a ganache node (npm ganache, started
   here): per job a JSON-RPC ``eth_blockNumber`` then one batch of 8 calls
   (``eth_getBalance``, ``balanceOf``), and one upsert of 8 balance rows.
   Users per minute, against the seed's 100 users/minute.

A benchmark, not a test: nothing is asserted. Results go to
``bench/results/portfolio-<UTC timestamp>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import statistics
import sys
from pathlib import Path
from typing import Any

import redis
import syncd_portfolio
import trio

from syncd.harness.report import machine, timestamp
from syncd.testing import PG_URL, REDIS_URL, daemon_config, delete_keys, run_daemon, unique_prefix

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins" / "syncd-portfolio" / "tests"))

from portfolio_support import Ganache, drop_tables, node  # noqa: E402

SEED_USERS_PER_MINUTE = 100


def span(client: redis.Redis, queue: str, ids: list[str]) -> tuple[int, float]:
    """(completed, seconds from the first processedOn to the last finishedOn)."""
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(f"bull:{queue}:{job_id}", "processedOn", "finishedOn", "returnvalue")
        rows = pipe.execute()
    done = [(int(p), int(f)) for p, f, _ in rows if p and f]
    if not done:
        return 0, 0.0
    return len(done), (max(f for _, f in done) - min(p for p, _ in done)) / 1000


def completed(client: redis.Redis, queue: str) -> int:
    return int(client.zcard(f"bull:{queue}:completed"))


async def wait_completed(client: redis.Redis, queue: str, n: int, timeout: float) -> None:
    """Poll BullMQ's completed set (another process's doing: no event to wait on)."""
    with trio.fail_after(timeout):
        # In a thread: a blocking call here would stall the worker under test,
        # which runs on this same Trio loop.
        while await trio.to_thread.run_sync(completed, client, queue) < n:  # noqa: ASYNC110
            await trio.sleep(0.05)


def section(queue: str, prefix: str, rpc_url: str, keep: int) -> dict[str, Any]:
    return {
        "queue": queue, "jobs_table": f"{prefix}_jobs", "balances_table": f"{prefix}_balances",
        "tokens_table": f"{prefix}_tokens", "chains": {1337: {"rpc_url": rpc_url}},
        "keep_completed": keep,
    }


async def syncd_noop(client: redis.Redis, rpc_url: str, jobs: int) -> float:
    prefix = unique_prefix("pb")
    queue = f"{prefix}_q"
    ids = node("add", queue, stdin=[
        {"name": "token-metadata", "data": {"chainId": 1337, "tokens": []}}] * jobs)
    cfg = daemon_config({"portfolio": section(queue, prefix, rpc_url, jobs)}, {"default": PG_URL})
    try:
        async with run_daemon(cfg, [syncd_portfolio]):
            await wait_completed(client, queue, jobs, 600)
        done, seconds = span(client, queue, ids)
        assert done == jobs, (done, jobs)
        return jobs / seconds
    finally:
        drop_tables(PG_URL, prefix)
        delete_keys(prefix)


def node_noop(client: redis.Redis, jobs: int) -> float:
    prefix = unique_prefix("pb")
    queue = f"{prefix}_q"
    try:
        ids = node("add", queue, stdin=[
            {"name": "token-metadata", "data": {"chainId": 1337, "tokens": []}}] * jobs)
        node("work", queue, "10", str(jobs), timeout=600)
        done, seconds = span(client, queue, ids)
        assert done == jobs, (done, jobs)
        return jobs / seconds
    finally:
        delete_keys(prefix)


async def syncd_users(client: redis.Redis, chain: Ganache, tokens: list[str],
                      users: int) -> dict[str, float]:
    prefix = unique_prefix("pb")
    queue = f"{prefix}_q"
    jobs = [{"name": "portfolio-sync", "data": {
        "userId": f"user{i}",
        "wallets": [{"chainId": 1337, "address": "0x" + secrets.token_hex(20)}
                    for _ in range(2)],
        "tokens": {"1337": tokens}}} for i in range(users)]
    ids = node("add", queue, stdin=jobs)
    cfg = daemon_config({"portfolio": section(queue, prefix, chain.url, users)},
                        {"default": PG_URL})
    try:
        async with run_daemon(cfg, [syncd_portfolio]):
            await wait_completed(client, queue, users, 1200)
        done, seconds = span(client, queue, ids)
        assert done == users, (done, users)
        import psycopg

        with psycopg.connect(PG_URL) as conn:
            rows = conn.execute(f'SELECT count(*) FROM "{prefix}_balances"').fetchone()[0]
        return {"users_per_minute": users / seconds * 60, "seconds": seconds,
                "balance_rows": rows}
    finally:
        drop_tables(PG_URL, prefix)
        delete_keys(prefix)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    client = redis.Redis.from_url(REDIS_URL)
    chain = Ganache()
    try:
        code = node("compile", stdin=(ROOT / "plugins/syncd-portfolio/tests/Token.sol")
                    .read_text())["bytecode"]
        tokens = [chain.deploy_token(code, n, s, d, 10**24)
                  for n, s, d in (("Moon", "MOON", 18), ("USD", "USDC", 6), ("Farm", "FARM", 8))]
        samples: dict[str, list[float]] = {"syncd": [], "node": []}
        for r in range(args.rounds):
            samples["syncd"].append(await syncd_noop(client, chain.url, args.jobs))
            samples["node"].append(await trio.to_thread.run_sync(node_noop, client, args.jobs))
            print(f"[portfolio] round {r + 1}: no-op jobs/s syncd {samples['syncd'][-1]:,.0f}"
                  f", node {samples['node'][-1]:,.0f}", file=sys.stderr, flush=True)
        sync_runs = []
        for r in range(args.rounds):
            sync_runs.append(await syncd_users(client, chain, tokens, args.users))
            print(f"[portfolio] round {r + 1}: {sync_runs[-1]['users_per_minute']:,.0f} "
                  "users/minute", file=sys.stderr, flush=True)
    finally:
        chain.close()
        client.close()
    syncd_rate = statistics.median(samples["syncd"])
    node_rate = statistics.median(samples["node"])
    upm = statistics.median(r["users_per_minute"] for r in sync_runs)
    return {
        "jobs": args.jobs, "users": args.users, "rounds": args.rounds,
        "noop": {"syncd_jobs_per_s": syncd_rate, "node_jobs_per_s": node_rate,
                 "ratio": syncd_rate / node_rate, "samples": samples},
        "sync": {"users_per_minute": upm, "vs_seed": upm / SEED_USERS_PER_MINUTE,
                 "runs": sync_runs},
        "machine": machine(),
    }


def report(result: dict[str, Any]) -> str:
    noop, sync = result["noop"], result["sync"]
    return "\n".join([
        f"# Portfolio benchmark ({result['rounds']} rounds, medians)",
        "",
        "| what | syncd | npm BullMQ worker | syncd / Node |",
        "|---|---:|---:|---:|",
        f"| no-op jobs/s, concurrency 10, {result['jobs']:,} jobs | "
        f"{noop['syncd_jobs_per_s']:,.0f} | {noop['node_jobs_per_s']:,.0f} | "
        f"{noop['ratio']:.2f}x |",
        "",
        "| what | syncd | seed | syncd / seed |",
        "|---|---:|---:|---:|",
        f"| portfolio-sync of {result['users']:,} users (2 wallets, 3 tokens) against ganache, "
        f"users/minute | {sync['users_per_minute']:,.0f} | {SEED_USERS_PER_MINUTE} | "
        f"{sync['vs_seed']:.1f}x |",
        "",
    ])


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                        help="where to write the results (--out none: nowhere)")
    args = parser.parse_args()
    logging.getLogger("syncd").setLevel(logging.ERROR)
    result = trio.run(main, args)
    text = report(result)
    print(text)
    if str(args.out) != "none":
        stamp = timestamp()
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"portfolio-{stamp}.md").write_text(text)
        (args.out / f"portfolio-{stamp}.json").write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out / f'portfolio-{stamp}.md'}")


if __name__ == "__main__":
    cli()
