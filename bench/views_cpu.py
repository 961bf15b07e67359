"""Views: where the CPU goes per 100,000 counters, and the pub/sub intake rate.

Run: ``.venv/bin/python bench/views_cpu.py [--counters 100000] [--messages 300000]
[--rounds 3] [--database pg|URL]``

Both parts run the real daemon in this process (only the views plugin, its
workload's keys and table) against a Redis server of their own, started on
an ephemeral port with persistence off, so that Redis' CPU time (``INFO
cpu``) is this run's alone on a machine whose shared Redis serves others.

CPU per 100k counters
    The counters are pre-loaded; then the daemon starts and its runner is
    flushed until a flush finds nothing (no polling of the keyspace beside
    it). Measured over that window: this process (``getrusage``: the
    daemon, its threads, the drivers), Redis (``used_cpu_user + sys``) and
    the PostgreSQL backends that served it (found by a unique
    ``application_name``, read from ``/proc/<pid>/stat``). Totals are
    published only while someone listens: ``--listener`` subscribes a
    ``redis-cli`` (another process) to the totals channel. Then the raw
    ceiling (the workload's ``UPDATE … FROM unnest`` per 10,000) is measured
    the same way: its Python and its backend.
Pub/sub intake
    With the daemon subscribed (``interval`` 1 h, so nothing but intake
    runs), a separate publisher process PUBLISHes ``--messages`` updates in
    pipelines as fast as it can. The rate is the updates received (what
    PUBLISH says reached a subscriber) over the time from the first publish
    until the daemon has stored them all in Redis (its
    ``views_messages_total{result="counted"}``); then the counters' sum in
    Redis is checked against the views published: nothing lost.

A benchmark, not a test: nothing is asserted, figures are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import statistics
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import attrs
import redis
import trio

import syncd
from syncd.config import parse_config
from syncd.daemon import Daemon
from syncd.harness.bench import reset_workload
from syncd.harness.env import open_env
from syncd.manager import get_plugin_manager
from syncd.testing import PG_URL, wait_for

TICKS = os.sysconf("SC_CLK_TCK")



@contextlib.contextmanager
def own_redis() -> Iterator[str]:
    """A redis-server on a free port, persistence off; killed afterwards."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no"], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        for _ in range(200):
            with contextlib.suppress(redis.ConnectionError):
                client.ping()
                break
            time.sleep(0.02)
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait()


def redis_cpu(url: str) -> float:
    client = redis.Redis.from_url(url)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def with_app_name(url: str, name: str) -> str:
    parts = urlsplit(url)
    query = (parts.query + "&" if parts.query else "") + urlencode({"application_name": name})
    return urlunsplit(parts._replace(query=query))


def backends_cpu(admin: Any, name: str) -> float:
    with admin.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,))
        pids = [pid for (pid,) in cur.fetchall()]
    admin.rollback()
    return sum(proc_cpu(pid) for pid in pids)


def config(workload: Any, redis_url: str, db_url: str, **options: Any) -> Any:
    return parse_config({
        "redis": {"url": redis_url},
        "databases": {"pg": db_url},
        "http": {"enabled": False},
        "shutdown_grace": "30s",
        "instance": f"bench-{uuid.uuid4().hex[:8]}",
        "plugins": {"views": {**workload.options, "database": "pg", **options}},
    })


async def cpu_round(counters: int, db_url: str, listener: bool = False) -> dict[str, float]:
    import psycopg
    from syncd_views.workload import ViewsWorkload

    pm = get_plugin_manager()
    prefix = f"vcpu_{uuid.uuid4().hex[:8]}"
    workload = ViewsWorkload(prefix, counters)
    app = f"views_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(db_url)
    figures: dict[str, float] = {}
    with own_redis() as redis_url, open_env(db_url, prefix, redis_url) as env:
        await trio.to_thread.run_sync(reset_workload, workload, env, True)
        await trio.to_thread.run_sync(workload.produce, env, 0, counters)
        daemon = Daemon.build(config(workload, redis_url, with_app_name(db_url, app),
                                     interval="1h", channel=None), pm)
        # Totals are published only while someone listens: with --listener,
        # redis-cli (another process) does, so that their cost is measured.
        listening = None
        if listener:
            listening = subprocess.Popen(  # noqa: ASYNC220 - starts at once; a benchmark
                ["redis-cli", "-p", str(urlsplit(redis_url).port), "subscribe",
                 workload.totals_channel], stdout=subprocess.DEVNULL)
            await wait_for(
                lambda: env.redis.pubsub_numsub(workload.totals_channel)[0][1], 30, 0.01)
        r0, p0, t0 = redis_cpu(redis_url), own_cpu(), time.perf_counter()
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.serve)
            runner = daemon.runner("views")
            while (await runner.flush()).batches:
                pass
            t1, p1, r1 = time.perf_counter(), own_cpu(), redis_cpu(redis_url)
            figures["syncd_db"] = backends_cpu(admin, app)
            figures["published"] = daemon.metrics.registry.get_sample_value(
                "views_totals_published_total") or 0.0
            daemon.request_shutdown()
        if listening is not None:
            listening.terminate()
            listening.wait()
        tally = await trio.to_thread.run_sync(workload.tally, env, counters)
        figures.update(seconds=t1 - t0, syncd=p1 - p0, syncd_redis=r1 - r0,
                       ok=float(tally.ok), counters=float(counters))
        # The ceiling: the same increments, raw.
        await trio.to_thread.run_sync(reset_workload, workload, env, True)
        ceiling_app = f"views_ceiling_{uuid.uuid4().hex[:8]}"
        ceiling_url = with_app_name(db_url, ceiling_app)

        def connect_keep() -> Any:
            """A connection whose backend's CPU is read just before it closes."""
            conn = psycopg.connect(ceiling_url)
            close = conn.close

            def close_after_reading() -> None:
                figures["ceiling_db"] = proc_cpu(conn.info.backend_pid)
                close()

            conn.close = close_after_reading  # type: ignore[method-assign]
            return conn

        p0, t0 = own_cpu(), time.perf_counter()
        ceiling_env = env.__class__(env.redis, ceiling_url, env.dialect, connect_keep, prefix)
        await trio.to_thread.run_sync(workload.ceiling, ceiling_env, counters)
        figures["ceiling_seconds"] = time.perf_counter() - t0
        figures["ceiling_python"] = own_cpu() - p0
        await trio.to_thread.run_sync(reset_workload, workload, env, False)
    admin.close()
    return figures


async def intake_round(messages: int, db_url: str) -> dict[str, float]:
    from syncd_views.workload import ViewsWorkload

    pm = get_plugin_manager()
    prefix = f"vpub_{uuid.uuid4().hex[:8]}"
    vods = 100_000  # redis-benchmark's __rand_int__ range
    workload = ViewsWorkload(prefix, 10)
    with own_redis() as redis_url, open_env(db_url, prefix, redis_url) as env:
        await trio.to_thread.run_sync(reset_workload, workload, env, True)
        # No flush but the final one, cut short: the counters are counted in Redis.
        settings = config(workload, redis_url, db_url, interval="1h", totals_channel=None)
        daemon = Daemon.build(attrs.evolve(settings, shutdown_grace=syncd.Duration(0.5)), pm)
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.serve)
            registry = daemon.metrics.registry
            await wait_for(lambda: env.redis.pubsub_numsub(workload.channel)[0][1], 30, 0.01)
            port = urlsplit(redis_url).port
            r0, p0, t0 = redis_cpu(redis_url), own_cpu(), time.perf_counter()
            # redis-benchmark: a publisher in C, so the publisher is not what is measured.
            await trio.to_thread.run_sync(lambda: subprocess.run(
                ["redis-benchmark", "-p", str(port), "-n", str(messages), "-c", "2", "-P", "50",
                 "-r", str(vods), "-q", "PUBLISH", workload.channel,
                 '{"vodId":"vod___rand_int__","count":1}'],
                capture_output=True, check=True))
            published_at = time.perf_counter()
            # Every 20 ms: a registry read collects every metric, and this
            # process' CPU is part of the figure.
            await wait_for(lambda: (registry.get_sample_value(
                "views_messages_total", {"result": "counted"}) or 0) >= messages, 600, 0.02)
            t1, p1, r1 = time.perf_counter(), own_cpu(), redis_cpu(redis_url)
            stored = 0
            for key in env.redis.scan_iter(match=workload.key_pattern, count=1000):
                stored += int(env.redis.get(key))
            daemon.request_shutdown()
        await trio.to_thread.run_sync(reset_workload, workload, env, False)
    return {"messages": messages, "stored": stored,
            "seconds": t1 - t0, "publish_seconds": published_at - t0,
            "syncd": p1 - p0, "redis": r1 - r0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counters", type=int, default=100_000)
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database", default=PG_URL)
    parser.add_argument("--skip", choices=["cpu", "intake"], default=None)
    parser.add_argument("--listener", action="store_true",
                        help="subscribe a redis-cli to the totals channel during the CPU part")
    args = parser.parse_args()
    per = 100_000 / args.counters
    rounds: list[dict[str, float]] = []
    for n in range(1, args.rounds + 1):
        if args.skip != "cpu":
            f = trio.run(cpu_round, args.counters, args.database, args.listener)
            rounds.append(f)
            print(f"round {n} cpu: {args.counters:,} counters in {f['seconds']:.3f} s "
                  f"({args.counters / f['seconds']:,.0f}/s, tally {'ok' if f['ok'] else 'WRONG'}, "
                  f"{f['published']:,.0f} totals published); "
                  f"CPU s per 100k: syncd {f['syncd'] * per:.3f}, redis "
                  f"{f['syncd_redis'] * per:.3f}, database {f['syncd_db'] * per:.3f} | ceiling "
                  f"{f['ceiling_seconds']:.3f} s ({args.counters / f['ceiling_seconds']:,.0f}/s): "
                  f"python {f['ceiling_python'] * per:.3f}, database {f['ceiling_db'] * per:.3f}",
                  flush=True)
        if args.skip != "intake":
            f = trio.run(intake_round, args.messages, args.database)
            lost = "nothing lost" if f["messages"] == f["stored"] else "MISMATCH"
            print(f"round {n} intake: {f['messages']:,} updates published while subscribed, "
                  f"stored in {f['seconds']:.3f} s = {f['messages'] / f['seconds']:,.0f} "
                  f"updates/s (publisher alone {f['publish_seconds']:.3f} s); in the counters "
                  f"{f['stored']:,} ({lost}); "
                  f"CPU s: syncd {f['syncd']:.3f}, redis {f['redis']:.3f}", flush=True)
    if rounds:
        summarize(rounds, per)


def summarize(rounds: list[dict[str, float]], per: float) -> None:
    """Medians over the rounds, and in how many syncd's own CPU stayed below the database's."""
    def median(key: str) -> float:
        return statistics.median(f[key] for f in rounds)

    below = sum(f["syncd"] < f["syncd_db"] for f in rounds)
    ratios = [f["ceiling_seconds"] / f["seconds"] for f in rounds]
    print(f"median of {len(rounds)} rounds: CPU s per 100k: syncd {median('syncd') * per:.3f}, "
          f"redis {median('syncd_redis') * per:.3f}, database {median('syncd_db') * per:.3f} "
          f"(syncd below the database in {below} of {len(rounds)} rounds); syncd / raw update "
          f"{statistics.median(ratios):.2f}x (rounds {', '.join(f'{r:.2f}' for r in ratios)})",
          flush=True)


if __name__ == "__main__":
    main()
