"""Test data for ``syncd bench`` and ``syncd chaos``: messages as a chat bridge pushes them.

Item ``i`` goes to queue ``in`` (odd) or ``out`` (even) and carries the token
``m<i>``, so the tally can tell which message arrived where, and how often.
Most are JSON objects; every tenth is raw text (wrapped by syncd); every
50th is no message at all (empty, not UTF-8, or over ``max_item_bytes``),
and every 100th holds ``\\u0000``, which PostgreSQL's JSONB refuses (the
database writer dead-letters it, the other writers take it).

Two variants: the ``database`` writer alone (the benchmark's comparison
with the seed's algorithm and the COPY ceiling), and ``all writers``
(database, daily files in a directory of the run, and a webhook receiver
running as a process of its own, `syncd_messages.receiver`). For files and
the webhook the tally counts, per message token, lines and deliveries:
a line twice, or a message delivered under two different webhook ids, is
a duplicate; the same id delivered twice is the at-least-once the webhook
promises, and not counted.

``baseline`` is the seed's algorithm (SETNX lock, RPOPLPUSH one item at a
time into ``tmp:<type>``, one autocommitted INSERT per message, DEL);
``ceiling`` one COPY (PostgreSQL) or ``executemany`` of the same rows.
Everything is synchronous: the harness calls it from threads.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import syncd
from syncd_messages.keys import dead_key, lane_key
from syncd_messages.receiver import logged_deliveries, token
from syncd_messages.schema import COLUMNS, create_statement, drop_statement, quote

PIPELINE = 1000
#: Items over this many bytes are dead-lettered (the workload's max_item_bytes).
MAX_ITEM_BYTES = 4096
TOKEN = re.compile(rb"\bm(\d+)\b")
WRITERS_ALL = ["database", "file", "webhook"]


def malformed(i: int) -> bool:
    return i % 50 == 49


def refused_by_postgres(i: int) -> bool:
    return i % 1000 == 27


def queue_type(i: int) -> str:
    return "in" if i % 2 else "out"


def item(i: int) -> bytes:
    """Item ``i`` exactly as the application would push it."""
    if malformed(i):
        kind = (i // 50) % 3
        if kind == 0:
            return b""
        if kind == 1:
            return b"\xff\xfe not utf-8 m%d" % i
        return json.dumps({"id": f"m{i}", "pad": "x" * MAX_ITEM_BYTES}).encode()
    if i % 10 == 3:
        return f"plain text message m{i}".encode()
    body = "nul \u0000 inside" if refused_by_postgres(i) else f"hello, this is message number {i}"
    return json.dumps({
        "id": f"m{i}", "from": "+4915112345678", "to": "+4917098765432",
        "body": body, "timestamp": 1700000000 + i, "type": "text",
    }, separators=(",", ":")).encode()


def expected_tokens(produced: int) -> list[int]:
    return [i for i in range(produced) if not malformed(i)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def messages_workloads(prefix: str, *, receiver: bool = True) -> list[syncd.Workload]:
    """The database writer alone, and all writers. ``receiver=False``: the
    caller runs its own webhook receiver (and sets ``webhook_url``)."""
    return [_workload(prefix, ["database"], "", receiver),
            _workload(f"{prefix}_all", WRITERS_ALL, "all writers", receiver)]


def _workload(prefix: str, writers: list[str], variant: str, own_receiver: bool
              ) -> syncd.Workload:
    queues = {"in": f"{prefix}:in", "out": f"{prefix}:out"}
    table = f"{prefix}_messages"
    files = Path(tempfile.gettempdir()) / f"syncd-{prefix}-files"
    receiver: dict[str, Any] = {}
    #: What the table holds for item ``i`` (None: no row), kept by ``produce``
    #: so that the ceiling's clock times the COPY and not the making of test data.
    stored: list[str | None] = []
    options: dict[str, Any] = {
        "queues": queues, "writers": writers, "table": table,
        "max_item_bytes": MAX_ITEM_BYTES,
    }
    if "file" in writers:
        options["file_path"] = str(files)
    if "webhook" in writers:
        receiver["port"] = _free_port()
        receiver["log"] = files.with_name(f"syncd-{prefix}-webhook.jsonl")
        options["webhook_url"] = f"http://127.0.0.1:{receiver['port']}/hook"

    def setup(env: syncd.WorkloadEnv) -> None:
        env.redis.delete(*queues.values(), *(dead_key(q) for q in queues.values()))
        with env.connection() as conn:
            cur = conn.cursor()
            cur.execute(drop_statement(env.dialect, table))
            cur.execute(create_statement(env.dialect, table))
            conn.commit()
        if "file" in writers:
            shutil.rmtree(files, ignore_errors=True)
        if "webhook" in writers and own_receiver:
            _start_receiver(receiver)

    def teardown(env: syncd.WorkloadEnv) -> None:
        _stop_receiver(receiver)
        with env.connection() as conn:
            conn.cursor().execute(drop_statement(env.dialect, table))
            conn.commit()
        shutil.rmtree(files, ignore_errors=True)
        if "log" in receiver:
            receiver["log"].unlink(missing_ok=True)

    def produce(env: syncd.WorkloadEnv, start: int, count: int) -> None:
        end = start + count
        for chunk in range(start, end, PIPELINE):
            with env.redis.pipeline(transaction=False) as pipe:
                for i in range(chunk, min(chunk + PIPELINE, end)):
                    raw = item(i)
                    pipe.lpush(queues[queue_type(i)], raw)
                    if i == len(stored):
                        stored.append(None if malformed(i) else stored_text(i, raw))
                pipe.execute()

    def pending(env: syncd.WorkloadEnv) -> int:
        keys = [*queues.values(), *(lane_key(q, w) for q in queues.values() for w in writers)]
        cluster = syncd.is_cluster(env.redis)
        with env.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.smembers(syncd.derived_key(key, "consumers", cluster=cluster))
            registries = pipe.execute()
        with env.redis.pipeline(transaction=False) as pipe:
            for key, consumers in zip(keys, registries, strict=True):
                pipe.llen(key)
                for consumer in consumers:
                    pipe.llen(syncd.derived_key(key, "processing", consumer.decode(),
                                                cluster=cluster))
            return sum(pipe.execute())

    def tally(env: syncd.WorkloadEnv, produced: int) -> syncd.Tally:
        valid = expected_tokens(produced)
        pg = env.dialect == "postgresql"
        refused = {i for i in valid if pg and refused_by_postgres(i)}
        in_sql = _sql_tokens(env, table)
        duplicates = sum(n - 1 for n in in_sql.values() if n > 1)
        lost = sum(1 for i in valid if i not in in_sql and i not in refused)
        if "file" in writers:
            lines = _file_tokens(files)
            duplicates += sum(n - 1 for n in lines.values() if n > 1)
            lost += sum(1 for i in valid if i not in lines)
        if "webhook" in writers:
            ids = _webhook_ids(receiver["log"])
            duplicates += sum(len(seen) - 1 for seen in ids.values() if len(seen) > 1)
            lost += sum(1 for i in valid if i not in ids)
        dead = sum(int(env.redis.llen(dead_key(q))) for q in queues.values())
        expected_dead = (produced - len(valid)) + len(refused)
        return syncd.Tally(
            produced=produced, expected=len(valid) - len(refused), in_sql=len(in_sql),
            duplicates=duplicates, lost=lost, expected_dead=expected_dead, dead_lettered=dead)

    def baseline(env: syncd.WorkloadEnv, produced: int) -> None:
        """The seed: lock, RPOPLPUSH one at a time into tmp lists, INSERT per row, DEL."""
        sql = _insert_sql(env.dialect, table)
        lock = f"{prefix}:syncLock"
        tmp = {q: f"{prefix}:tmp:{q}" for q in queues}
        with env.connection(autocommit=True) as conn:
            cur = conn.cursor()
            while env.redis.set(lock, "1", nx=True, px=300_000):
                moved = 0
                for q, source in queues.items():
                    batch = []
                    for _ in range(100):  # the seed's SYNC_BATCH_SIZE
                        raw = env.redis.rpoplpush(source, tmp[q])
                        if raw is None:
                            break
                        batch.append(raw)
                    for position, raw in enumerate(batch):
                        row = _seed_row(q, raw, position, env.dialect)
                        if row is not None:
                            with contextlib.suppress(Exception):
                                cur.execute(sql, row)
                    env.redis.delete(tmp[q])
                    moved += len(batch)
                env.redis.delete(lock)
                if not moved:
                    return

    def ceiling(env: syncd.WorkloadEnv, produced: int) -> None:
        """The same rows straight into the table, one COPY (or executemany), one commit.

        The rows' text comes from ``produce``, which made the items: making
        it here, under the clock, took longer than the COPY itself (1.4-2.2 s
        of 3.5 s for 200,000 messages), and halved the ceiling.
        """
        stamp: Any = datetime.now(UTC)
        if env.dialect != "postgresql":
            stamp = stamp.strftime("%Y-%m-%d %H:%M:%S.%f")
        for i in range(len(stored), produced):  # not produced in this process yet
            stored.append(None if malformed(i) else stored_text(i, item(i)))
        rows = [(queue_type(i), stored[i], "ceiling", i, stamp)
                for i in expected_tokens(produced)
                if not (env.dialect == "postgresql" and refused_by_postgres(i))]
        with env.connection() as conn:
            cur = conn.cursor()
            if env.dialect == "postgresql":
                cols = ", ".join(quote(env.dialect, c) for c in COLUMNS)
                with cur.copy(f"COPY {quote(env.dialect, table)} ({cols}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                cur.executemany(_insert_sql(env.dialect, table), rows)
            conn.commit()

    return syncd.Workload(
        plugin="messages", options=options, unit="messages", setup=setup, produce=produce,
        pending=pending, tally=tally,
        baseline=baseline if not variant else None, ceiling=ceiling if not variant else None,
        teardown=teardown, dialects=("postgresql", "mysql", "sqlite"),
        variant=variant, prefix=prefix,
    )


def stored_text(i: int, raw: bytes) -> str:
    """What syncd stores for valid item ``i``, ``raw`` (raw text wrapped as the plugin does)."""
    if i % 10 == 3:
        return json.dumps({"text": raw.decode(), "queueType": queue_type(i),
                           "receivedAt": "2024-01-01T00:00:00.000Z"})
    return raw.decode()


def _seed_row(q: str, raw: bytes, position: int, dialect: str) -> tuple[Any, ...] | None:
    """The seed's parse: JSON, else wrap the text; bytes it cannot read are dropped."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return None
    if not text:
        return None
    try:
        json.loads(text)
        doc = text
    except ValueError:
        doc = json.dumps({"text": text, "queueType": q,
                          "receivedAt": datetime.now(UTC).isoformat()})
    now: Any = datetime.now(UTC)
    if dialect != "postgresql":
        now = now.strftime("%Y-%m-%d %H:%M:%S.%f")
    return (q, doc, "seed", position, now)


def _sql_tokens(env: syncd.WorkloadEnv, table: str) -> Counter[int]:
    column = "message::text" if env.dialect == "postgresql" else "message"
    with env.connection() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT {column} FROM {quote(env.dialect, table)}")
        counts: Counter[int] = Counter()
        for (message,) in cur.fetchall():
            text = message.encode() if isinstance(message, str) else bytes(message)
            found = TOKEN.search(text)
            if found:
                counts[int(found.group(1))] += 1
        conn.rollback()
    return counts


def _file_tokens(directory: Path) -> Counter[int]:
    counts: Counter[int] = Counter()
    for path in sorted(directory.glob("messages_*.jsonl")):
        for line in path.read_bytes().splitlines():
            found = TOKEN.search(line)
            if found:
                counts[int(found.group(1))] += 1
    return counts


def _webhook_ids(log: Path) -> dict[int, set[str]]:
    """Per message token, the webhook ids it was delivered under."""
    ids: dict[int, set[str]] = {}
    if not log.exists():
        return ids
    for webhook_id, messages in logged_deliveries(log):
        for message in messages:
            found = TOKEN.search(token(message).encode())
            if found:
                ids.setdefault(int(found.group(1)), set()).add(webhook_id)
    return ids


def _start_receiver(receiver: dict[str, Any]) -> None:
    """The receiver as a process of its own, answering 200 at once; waits until it listens."""
    _stop_receiver(receiver)
    receiver["log"].unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd_messages.receiver", "--port", str(receiver["port"]),
         "--log", str(receiver["log"])],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    receiver["proc"] = proc
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready else b""
    proc.stdout.close()
    if not line.startswith(b"listening"):
        _stop_receiver(receiver)
        raise RuntimeError(f"webhook receiver did not start on port {receiver['port']} "
                           f"(exit {proc.poll()}; is the port taken?)")


def _stop_receiver(receiver: dict[str, Any]) -> None:
    syncd.stop_process(receiver.pop("proc", None))


def _insert_sql(dialect: str, table: str) -> str:
    mark = "?" if dialect == "sqlite" else "%s"
    columns = ", ".join(quote(dialect, c) for c in COLUMNS)
    return (f"INSERT INTO {quote(dialect, table)} ({columns}) "
            f"VALUES ({', '.join([mark] * len(COLUMNS))})")


