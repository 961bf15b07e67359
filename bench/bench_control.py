"""How the control plane answers while the daemon moves data at full speed.

Run: ``.venv/bin/python bench/bench_control.py [--duration 10] [--clients 50]``

Starts a daemon in a child process twice: idle (no plugin) and loaded (a
``pump`` plugin that moves data as fast as it can: per batch of 500, one
pipeline of INCRBYs into Redis and one transaction of INSERTs into
PostgreSQL). Against each, 50 concurrent keep-alive clients hammer
``/metrics``, then ``/health/ready``, for ``--duration`` seconds each.
Prints p50/p99 latency and requests/s per endpoint, idle and loaded side by
side with their ratio, and the pump's rate alone, under ordinary monitoring
(one scrape and one readiness probe a second) and during each flood.

The clients speak minimal HTTP/1.1 over raw Trio sockets, in this (parent)
process, so that what is measured is the server and not an HTTP library.
This is a benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import attrs
import trio

ROOT = Path(__file__).resolve().parent.parent
ENDPOINTS = ("/metrics", "/health/ready")


# -- the child: a daemon, optionally with the pump ------------------------------------------


def pump_plugin() -> object:
    import syncd

    @attrs.frozen
    class PumpConfig:
        key: str = "bench"
        batch: int = 500
        table: str = ""

    @attrs.define(eq=False)
    class PumpWorker:
        ctx: syncd.PluginContext
        interval: float | None = None

        async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                      ) -> None:
            config = self.ctx.config
            db = self.ctx.database
            await db.execute(f"CREATE TABLE IF NOT EXISTS {config.table} "
                             "(id BIGSERIAL PRIMARY KEY, n INTEGER NOT NULL)")
            task_status.started()
            keys = [f"{config.key}:{i}" for i in range(16)]
            rows = [(i,) for i in range(config.batch)]

            def incr(client: Any) -> None:
                pipe = client.pipeline(transaction=False)
                for i in range(config.batch):
                    pipe.incrby(keys[i % len(keys)], 1)
                pipe.execute()

            def insert(tx: Any) -> None:
                tx.executemany(f"INSERT INTO {config.table} (n) VALUES (%s)", rows)

            while True:
                await self.ctx.gate.wait()
                await self.ctx.redis.run(incr)
                await db.transaction(insert)
                self.ctx.report(syncd.SyncResult(items=config.batch, batches=1))

        async def flush(self) -> syncd.SyncResult:
            return syncd.SyncResult()

    class Pump:
        @syncd.hookimpl
        def syncd_plugin(self) -> syncd.PluginSpec:
            return syncd.PluginSpec(name="pump", config=PumpConfig, create=PumpWorker)

    return Pump()


async def child(loaded: bool, prefix: str) -> None:
    from syncd.config import parse_config
    from syncd.daemon import Daemon
    from syncd.logs import setup_logging
    from syncd.manager import get_plugin_manager
    from syncd.testing import daemon_config

    setup_logging("warning")
    plugins = {"pump": {"key": prefix, "table": prefix}} if loaded else {}
    config = parse_config(daemon_config(plugins, http=True))
    pm = get_plugin_manager([pump_plugin()] if loaded else [], autoload=False)
    daemon = Daemon.build(config, pm)
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(daemon.serve, handle_signals=True))
        print(json.dumps({"url": daemon.http_binds[0]}), flush=True)


def cleanup(prefix: str) -> None:
    import psycopg
    import redis

    from syncd.testing import PG_URL, REDIS_URL

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {prefix}")


# -- the parent: raw HTTP/1.1 clients ------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.stream: trio.SocketStream | None = None
        self.buffer = b""

    async def get(self, path: str) -> tuple[int, bytes]:
        for attempt in range(2):
            if self.stream is None:
                self.stream = await trio.open_tcp_stream(self.host, self.port)
                self.buffer = b""
            try:
                await self.stream.send_all(
                    f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode())
                return await self._response()
            except (trio.BrokenResourceError, trio.ClosedResourceError, EOFError):
                await self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _response(self) -> tuple[int, bytes]:
        assert self.stream is not None
        while b"\r\n\r\n" not in self.buffer:
            await self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.split(b":", 1) for line in lines[1:])
        headers = {k.strip().lower(): v.strip() for k, v in headers.items()}
        length = int(headers.get(b"content-length", b"0"))
        while len(self.buffer) < length:
            await self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        if headers.get(b"connection", b"").lower() == b"close":
            await self.close()
        return status, body

    async def _fill(self) -> None:
        assert self.stream is not None
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError
        self.buffer += data

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
            self.stream = None


@attrs.define
class Figures:
    latencies: list[float] = attrs.Factory(list)
    statuses: dict[int, int] = attrs.Factory(dict)
    elapsed: float = 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return math.nan
        return ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)] * 1000

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


async def hammer(host: str, port: int, path: str, clients: int, duration: float) -> Figures:
    figures = Figures()
    deadline = trio.current_time() + duration

    async def client() -> None:
        connection = Connection(host, port)
        try:
            while trio.current_time() < deadline:
                started = time.perf_counter()
                status, _ = await connection.get(path)
                figures.latencies.append(time.perf_counter() - started)
                figures.statuses[status] = figures.statuses.get(status, 0) + 1
        finally:
            await connection.close()

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client)
    figures.elapsed = trio.current_time() - started
    return figures


async def items_synced(host: str, port: int) -> int:
    """The pump's items so far, read with a one-off request."""
    connection = Connection(host, port)
    try:
        _, body = await connection.get("/plugins/pump")
    finally:
        await connection.close()
    return int(json.loads(body)["items_synced"])


async def pump_rate(host: str, port: int, duration: float) -> float:
    before = await items_synced(host, port)
    started = trio.current_time()
    await trio.sleep(duration)
    return (await items_synced(host, port) - before) / (trio.current_time() - started)


async def poll(host: str, port: int, duration: float) -> None:
    """What monitoring usually does: a scrape and a readiness probe, each once a second."""
    connection = Connection(host, port)
    deadline = trio.current_time() + duration
    try:
        while trio.current_time() < deadline:
            for path in ENDPOINTS:
                await connection.get(path)
            await trio.sleep(1)
    finally:
        await connection.close()


async def measure(loaded: bool, args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", "loaded" if loaded else "idle",
               "--prefix", prefix]
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    async with trio.open_nursery() as nursery:
        proc = await nursery.start(functools.partial(
            trio.run_process, command, stdout=subprocess.PIPE, env=env, check=False))
        try:
            line = b""
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError("the daemon did not start")
                line += chunk
            url = json.loads(line)["url"]
            host, port = url.removeprefix("http://").rsplit(":", 1)
            result: dict[str, Any] = {}
            mode = "loaded" if loaded else "idle"
            if loaded:
                # Alternate short rounds so that a noisy neighbour hits both alike.
                progress(f"{mode}: the pump alone, then under ordinary monitoring "
                         f"({2 * args.duration:g} s)")
                rounds = 3
                alone, polled = [], []
                for _ in range(rounds):
                    alone.append(await pump_rate(host, int(port), args.duration / rounds))
                    async with trio.open_nursery() as pollers:
                        pollers.start_soon(poll, host, int(port), args.duration / rounds)
                        polled.append(await pump_rate(host, int(port), args.duration / rounds))
                result["pump_alone"] = statistics.median(alone)
                result["pump_polled"] = statistics.median(polled)
            for path in ENDPOINTS:
                progress(f"{mode}: hammering {path} ({args.duration:g} s)")
                # Warm up (first requests import and allocate), then measure.
                await hammer(host, int(port), path, args.clients, 1.0)
                before = await items_synced(host, int(port)) if loaded else 0
                figures = await hammer(host, int(port), path, args.clients, args.duration)
                if loaded:
                    after = await items_synced(host, int(port))
                    result[f"pump_during:{path}"] = (after - before) / figures.elapsed
                result[path] = figures
            return result
        finally:
            proc.send_signal(signal.SIGTERM)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def report(idle: dict[str, Any], loaded: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\ncontrol plane under {args.clients} concurrent keep-alive clients, "
          f"{args.duration:g} s per endpoint ({os.cpu_count()} CPUs)\n")
    print(f"{'endpoint':<15}{'':>8}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}  statuses")
    for path in ENDPOINTS:
        for label, figures in (("idle", idle[path]), ("loaded", loaded[path])):
            statuses = ",".join(f"{k}x{v}" for k, v in sorted(figures.statuses.items()))
            print(f"{path:<15}{label:>8}{figures.percentile(50):>10.2f}"
                  f"{figures.percentile(99):>10.2f}{figures.rate:>10.0f}  {statuses}")
        i, lo = idle[path], loaded[path]
        print(f"{path:<15}{'ratio':>8}{lo.percentile(50) / i.percentile(50):>10.2f}"
              f"{lo.percentile(99) / i.percentile(99):>10.2f}{lo.rate / i.rate:>10.2f}"
              "  (loaded / idle)")
    alone = loaded["pump_alone"]
    print(f"\npump alone: {alone:,.0f} items/s (Redis INCRBY pipeline + PostgreSQL INSERT, "
          "500 per batch)")
    polled = loaded["pump_polled"]
    print(f"pump with /metrics and /health/ready polled once a second: {polled:,.0f} items/s "
          f"({polled / alone:.2f} of alone)")
    for path in ENDPOINTS:
        during = loaded[f"pump_during:{path}"]
        print(f"pump while {path} is hammered: {during:,.0f} items/s "
              f"({during / alone:.2f} of alone)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--child", choices=["idle", "loaded"], help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        trio.run(child, args.child == "loaded", args.prefix)
        return
    prefix = f"bench_{uuid.uuid4().hex[:10]}"
    try:
        idle = trio.run(measure, False, args, prefix)
        loaded = trio.run(measure, True, args, prefix)
    finally:
        cleanup(prefix)
    report(idle, loaded, args)


if __name__ == "__main__":
    main()
