"""Test data for ``syncd bench`` and ``syncd chaos``: votes as the application makes them.

Item ``i`` is a vote by voter ``v{i}``, so the tally can tell exactly which
votes arrived, which twice, and which not at all. Every 50th item is
malformed (not JSON, a missing field, or a vote too long for its column),
the same items in every run. Timestamps come in every accepted form (ISO
8601 with and without an offset, epoch seconds and milliseconds, missing).

``baseline`` is the seed's algorithm (BRPOP one vote, INSERT it in
autocommit), ``ceiling`` one ``executemany`` of the same rows in one
transaction. Everything is synchronous: the harness calls it from threads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import syncd
from syncd_votes.config import VotesConfig
from syncd_votes.schema import COLUMNS, create_statements, drop_statement, quote
from syncd_votes.validate import Invalid, parse_vote

#: Every MALFORMED_EVERY-th item (i % 50 == 49) is malformed.
MALFORMED_EVERY = 50
CHOICES = ("a", "b", "c", "d", "e")
PIPELINE = 1000
#: Timestamps start here and advance one second per item.
T0 = datetime(2024, 1, 1)


def malformed(i: int) -> bool:
    return i % MALFORMED_EVERY == MALFORMED_EVERY - 1


def item(i: int) -> bytes:
    """Item ``i`` exactly as the application would push it."""
    if malformed(i):
        kind = (i // MALFORMED_EVERY) % 3
        if kind == 0:
            return f"not json {i}".encode()
        if kind == 1:
            return json.dumps({"vote": CHOICES[i % 5], "timestamp": _iso(i)}).encode()
        return json.dumps({"vote": "x" * 11, "voter_id": f"v{i}"}).encode()
    doc: dict[str, Any] = {"vote": CHOICES[i % len(CHOICES)], "voter_id": f"v{i}"}
    when = T0 + timedelta(seconds=i)
    form = i % 5
    if form == 0:
        doc["timestamp"] = _iso(i)
    elif form == 1:
        doc["timestamp"] = when.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
    elif form == 2:
        doc["timestamp"] = int(when.replace(tzinfo=UTC).timestamp())
    elif form == 3:
        doc["timestamp"] = int(when.replace(tzinfo=UTC).timestamp() * 1000)
    # form 4: no timestamp, stored as the time of consumption
    return json.dumps(doc, separators=(",", ":")).encode()


def _iso(i: int) -> str:
    return (T0 + timedelta(seconds=i)).isoformat()


def rows(start: int, count: int, dialect: str = "mysql") -> Iterator[tuple[str, str, Any]]:
    """The rows the valid items among ``start..start+count-1`` become.

    Computed directly, not by parsing `item`: the ceiling times the database,
    not JSON.
    """
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    for i in range(start, start + count):
        if not malformed(i):
            when = now if i % 5 == 4 else T0 + timedelta(seconds=i)
            yield _param(dialect, (CHOICES[i % len(CHOICES)], f"v{i}", when))


def _param(dialect: str, row: tuple[str, str, datetime]) -> tuple[str, str, Any]:
    # sqlite3's datetime adapter is deprecated (3.12): give it the text it made.
    return (row[0], row[1], str(row[2])) if dialect == "sqlite" else row


def votes_workload(prefix: str) -> syncd.Workload:
    options = {
        "queue": f"{prefix}:votes",
        "table": f"{prefix}_votes",
        "dead_letter": f"{prefix}:votes:dead",
    }
    cfg = VotesConfig(**options)

    def setup(env: syncd.WorkloadEnv) -> None:
        env.redis.delete(cfg.queue, cfg.dead_letter)
        with env.connection() as conn:
            cur = conn.cursor()
            cur.execute(drop_statement(env.dialect, cfg.table))
            for statement in create_statements(env.dialect, cfg.table):
                cur.execute(statement)
            conn.commit()

    def teardown(env: syncd.WorkloadEnv) -> None:
        with env.connection() as conn:
            conn.cursor().execute(drop_statement(env.dialect, cfg.table))
            conn.commit()

    def produce(env: syncd.WorkloadEnv, start: int, count: int) -> None:
        end = start + count
        for chunk in range(start, end, PIPELINE):
            with env.redis.pipeline(transaction=False) as pipe:
                for i in range(chunk, min(chunk + PIPELINE, end)):
                    pipe.lpush(cfg.queue, item(i))
                pipe.execute()

    def pending(env: syncd.WorkloadEnv) -> int:
        # Processing lists are named {queue}:processing:{consumer}, for every
        # consumer in the registry {queue}:consumers (syncd.ReliableQueue;
        # tagged into the queue's slot on a cluster).
        cluster = syncd.is_cluster(env.redis)
        consumers = env.redis.smembers(syncd.derived_key(cfg.queue, "consumers", cluster=cluster))
        with env.redis.pipeline(transaction=False) as pipe:
            pipe.llen(cfg.queue)
            for consumer in consumers:
                pipe.llen(syncd.derived_key(cfg.queue, "processing", consumer.decode(),
                                            cluster=cluster))
            return sum(pipe.execute())

    def tally(env: syncd.WorkloadEnv, produced: int) -> syncd.Tally:
        with env.connection() as conn:
            cur = conn.cursor()
            cur.execute(
                f"SELECT voter_id, COUNT(*) FROM {quote(env.dialect, cfg.table)} GROUP BY voter_id"
            )
            counts = {voter: int(n) for voter, n in cur.fetchall()}
            conn.rollback()
        valid = {f"v{i}" for i in range(produced) if not malformed(i)}
        dead_voters = _dead_voters(env, cfg.dead_letter)
        return syncd.Tally(
            produced=produced,
            expected=len(valid),
            in_sql=sum(counts.values()),
            duplicates=sum(n - 1 for n in counts.values() if n > 1),
            lost=len(valid - counts.keys() - dead_voters),
            expected_dead=produced - len(valid),
            dead_lettered=int(env.redis.llen(cfg.dead_letter)),
        )

    def baseline(env: syncd.WorkloadEnv, produced: int) -> None:
        """The seed: BRPOP one vote, validate it, INSERT it, autocommit; until empty."""
        sql = _insert_sql(env.dialect, cfg.table)
        with env.connection(autocommit=True) as conn:
            cur = conn.cursor()
            while True:
                popped = env.redis.brpop([cfg.queue], timeout=1)
                if popped is None:
                    return
                now = datetime.now(UTC).replace(tzinfo=None)
                try:
                    vote = parse_vote(popped[1], now=now)
                except Invalid:
                    continue  # the seed logged it and dropped it
                cur.execute(sql, _param(env.dialect, vote))

    def ceiling(env: syncd.WorkloadEnv, produced: int) -> None:
        """The same rows in one executemany, one transaction: the database's best."""
        batch = list(rows(0, produced, env.dialect))
        with env.connection() as conn:
            cur = conn.cursor()
            cur.executemany(_insert_sql(env.dialect, cfg.table), batch)
            conn.commit()

    return syncd.Workload(
        plugin="votes",
        options=options,
        unit="votes",
        setup=setup,
        produce=produce,
        pending=pending,
        tally=tally,
        baseline=baseline,
        ceiling=ceiling,
        teardown=teardown,
        dialects=("mysql", "postgresql", "sqlite"),
    )


def _dead_voters(env: syncd.WorkloadEnv, key: str) -> set[str]:
    """Voter ids found in dead letters (a valid vote the database refused is not lost)."""
    voters: set[str] = set()
    for raw in env.redis.lrange(key, 0, -1):
        try:
            doc = json.loads(syncd.DeadLetter.decode(key, raw).payload_bytes)
        except (ValueError, KeyError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("voter_id"), str):
            voters.add(doc["voter_id"])
    return voters


def _insert_sql(dialect: str, table: str) -> str:
    mark = "?" if dialect == "sqlite" else "%s"
    columns = ", ".join(quote(dialect, c) for c in COLUMNS)
    return (f"INSERT INTO {quote(dialect, table)} ({columns}) "
            f"VALUES ({', '.join([mark] * len(COLUMNS))})")


