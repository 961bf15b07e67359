"""Helpers shared by the votes plugin's tests (conftest.py puts this
directory on sys.path under importlib mode)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import trio
import yaml
from syncd_votes.schema import drop_statement
from syncd_votes.workload import votes_workload

import syncd
from syncd.testing import connector, delete_keys, dialect_of, redis_client_for


@attrs.define
class Votes:
    """One test's votes setup: workload, env, config section; cleans up after itself."""

    workload: syncd.Workload
    env: syncd.WorkloadEnv
    url: str
    redis_url: str = ""

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.workload.options)

    @property
    def queue(self) -> str:
        return self.options["queue"]

    @property
    def dead(self) -> str:
        return self.options["dead_letter"]

    @property
    def table(self) -> str:
        return self.options["table"]

    def section(self, **overrides: Any) -> dict[str, Any]:
        return {**self.options, **overrides}

    def rows(self, where: str = "") -> list[tuple[Any, ...]]:
        with contextlib.closing(self.env.connect()) as conn:
            cur = conn.cursor()
            cur.execute(f"SELECT vote, voter_id, timestamp FROM {self.table} {where} ORDER BY id")
            rows = [tuple(r) for r in cur.fetchall()]
            conn.rollback()
        return rows

    def dead_letters(self) -> list[syncd.DeadLetter]:
        return [syncd.DeadLetter.decode(self.dead, raw)
                for raw in self.env.redis.lrange(self.dead, 0, -1)]

    def push(self, *items: bytes | str | dict[str, Any]) -> None:
        raw = [json.dumps(i).encode() if isinstance(i, dict) else i for i in items]
        for start in range(0, len(raw), 1000):
            self.env.redis.lpush(self.queue, *raw[start:start + 1000])

    def pending(self) -> int:
        return self.workload.pending(self.env)


@contextlib.contextmanager
def open_votes(prefix: str, db_url: str, redis_url: str) -> Iterator[Votes]:
    client = redis_client_for(redis_url)
    workload = votes_workload(prefix)
    env = syncd.WorkloadEnv(client, db_url, dialect_of(db_url), connector(db_url), prefix)
    workload.setup(env)
    try:
        yield Votes(workload, env, db_url, redis_url)
    finally:
        with contextlib.closing(env.connect()) as conn:
            cur = conn.cursor()
            cur.execute(drop_statement(env.dialect, workload.options["table"]))
            conn.commit()
        client.close()
        delete_keys(prefix, redis_url)


# -- a TCP proxy that can play "the database went away" ---------------------------


@attrs.define(eq=False)
class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``; `stop` drops every connection
    and refuses new ones until served again on the same port.

    ``upstream_ports`` are the local ports of the proxy's own connections to
    the server, which the server reports as the client's port: that is how a
    test finds (and KILLs) exactly the daemon's sessions.
    """

    upstream: tuple[str, int]
    port: int = 0
    upstream_ports: set[int] = attrs.Factory(set)
    _scope: trio.CancelScope | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as self._scope:
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                task_status.started()
                await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()
        self.upstream_ports.clear()

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            try:
                server = await trio.open_tcp_stream(*self.upstream)
            except OSError:
                return
            port = server.socket.getsockname()[1]
            self.upstream_ports.add(port)
            try:
                async with server, trio.open_nursery() as nursery:
                    nursery.start_soon(_pipe, client, server, nursery.cancel_scope)
                    await _pipe(server, client, nursery.cancel_scope)
            finally:
                self.upstream_ports.discard(port)


async def _pipe(src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope) -> None:
    try:
        while data := await src.receive_some(65536):
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()


# -- syncd serve as a subprocess ----------------------------------------------------


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def start_serve(config_path: Path, log: Path, *, crash_at: str | None = None,
                crash_after: int = 0) -> subprocess.Popen[bytes]:
    """``syncd serve`` with the plugin found through its entry point, output in ``log``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SYNCD_") or k.startswith("SYNCD_TEST_")}
    if crash_at:
        env["SYNCD_CRASH_AT"] = crash_at
        env["SYNCD_CRASH_AFTER"] = str(crash_after)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "syncd", "serve", "--config", str(config_path)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )


def stop_serve(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
