"""Helpers shared by the messages plugin's tests (conftest.py puts this folder on sys.path)."""

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
import yaml
from syncd_messages.keys import dead_key, lane_key
from syncd_messages.workload import messages_workloads

import syncd
from syncd.testing import REDIS_URL, connector, delete_keys, dialect_of, redis_client_for


@attrs.define
class Messages:
    """One test's messages setup: a workload of the plugin, its env; cleans up after itself."""

    workload: syncd.Workload
    env: syncd.WorkloadEnv
    url: str
    redis_url: str = REDIS_URL

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.workload.options)

    @property
    def queues(self) -> dict[str, str]:
        return self.options["queues"]

    @property
    def files(self) -> Path:
        return Path(self.options["file_path"])

    def section(self, **overrides: Any) -> dict[str, Any]:
        return {**self.options, **overrides}

    def push(self, queue_type: str, *items: bytes | str | dict[str, Any]) -> None:
        raw = [json.dumps(i).encode() if isinstance(i, dict) else i for i in items]
        for start in range(0, len(raw), 1000):
            self.env.redis.lpush(self.queues[queue_type], *raw[start:start + 1000])

    def rows(self, queue_type: str | None = None) -> list[tuple[str, str, int]]:
        """``(queue_type, message as text, position)`` in id order."""
        column = "message::text" if self.env.dialect == "postgresql" else "message"
        where = f" WHERE queue_type = '{queue_type}'" if queue_type else ""
        with contextlib.closing(self.env.connect()) as conn:
            cur = conn.cursor()
            cur.execute(f"SELECT queue_type, {column}, position FROM "
                        f"{self.options['table']}{where} ORDER BY id")
            rows = [tuple(r) for r in cur.fetchall()]
            conn.rollback()
        return rows

    def lines(self, queue_type: str) -> list[bytes]:
        if "file_path" not in self.options:
            return []
        found = sorted(self.files.glob(f"messages_{queue_type}_*.jsonl"))
        return [line for path in found for line in path.read_bytes().splitlines()]

    def dead_letters(self, queue_type: str) -> list[syncd.DeadLetter]:
        key = dead_key(self.queues[queue_type])
        return [syncd.DeadLetter.decode(key, raw) for raw in self.env.redis.lrange(key, 0, -1)]

    def waiting(self, queue_type: str, writer: str) -> int:
        return int(self.env.redis.llen(lane_key(self.queues[queue_type], writer)))

    def pending(self) -> int:
        return self.workload.pending(self.env)

    def tally(self, produced: int) -> syncd.Tally:
        return self.workload.tally(self.env, produced)


@contextlib.contextmanager
def open_messages(prefix: str, db_url: str, *, variant: int = 1,
                  receiver: bool = False, redis_url: str = REDIS_URL) -> Iterator[Messages]:
    """A workload of the plugin (variant 1: every writer) set up, torn down afterwards;
    ``receiver``: with the workload's own webhook receiver process."""
    client = redis_client_for(redis_url)
    workload = messages_workloads(prefix, receiver=receiver)[variant]
    env = syncd.WorkloadEnv(client, db_url, dialect_of(db_url), connector(db_url),
                            workload.prefix or prefix)
    workload.setup(env)
    try:
        yield Messages(workload, env, db_url, redis_url)
    finally:
        try:
            assert workload.teardown is not None
            workload.teardown(env)
        finally:
            client.close()
            delete_keys(prefix, redis_url)


# -- syncd serve as a subprocess ----------------------------------------------------


def serve_config(messages: Messages, instance: str, **options: Any) -> dict[str, Any]:
    return {
        "redis": {"url": messages.redis_url},
        "databases": {"default": messages.url},
        "http": {"enabled": False},
        "instance": instance,
        "shutdown_grace": "10s",
        "restart_backoff_max": "1s",
        "log_level": "info",
        "plugins": {"messages": messages.section(**options)},
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def start_serve(config_path: Path, log: Path, *, crash_at: str | None = None,
                crash_after: int = 0, stop_at: str | None = None,
                stop_after: int = 0) -> subprocess.Popen[bytes]:
    """``syncd serve`` with the plugin found through its entry point, output in ``log``;
    ``crash_at`` SIGKILLs it, ``stop_at`` SIGSTOPs it, at that point (`syncd.crash_point`)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SYNCD_") or k.startswith("SYNCD_TEST_")}
    if crash_at:
        env["SYNCD_CRASH_AT"] = crash_at
        env["SYNCD_CRASH_AFTER"] = str(crash_after)
    if stop_at:
        env["SYNCD_STOP_AT"] = stop_at
        env["SYNCD_STOP_AFTER"] = str(stop_after)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "syncd", "serve", "--config", str(config_path)],
            env=env, stdout=out, stderr=subprocess.STDOUT)


def stop_serve(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
