"""Test data for ``syncd bench`` / ``syncd chaos``: node counters as the application makes them.

Item ``i`` is one report from a node: ``HINCRBY`` of its upload and download
bytes (deterministic pseudo-random values) plus the 24 h TTL, all pipelined.
Item ``i`` goes to node ``i % nodes + 1``; every 97th item is malformed
instead, in turn: a key without an integer id, a non-integer field value, and
a node id with no row. Each malformed item has a key of its own, so each
becomes exactly one dead letter however the flushes fall.

Everything is synchronous and uses only the plain clients in `syncd.WorkloadEnv`.
"""

from __future__ import annotations

import functools
from typing import Any

import syncd
from syncd_traffic.config import TrafficConfig

#: Node rows created by ``setup`` (ids 1..NODES): a 100,000-item run touches
#: 100,000 distinct nodes, the size of the benchmark the seed is judged by.
NODES = 100_000
MALFORMED_EVERY = 97
TTL = 24 * 3600
#: Items per Redis pipeline round trip in ``produce``.
PIPELINE = 2_000
#: Rows per statement for the ceiling's raw upsert.
CEILING_BATCH = 10_000


def upload(i: int) -> int:
    return 1 + (i * 2_654_435_761) % 9_999_991


def download(i: int) -> int:
    return 1 + (i * 40_503 + 12_345) % 49_999_999


def malformed_kind(i: int) -> int | None:
    """None for a good item, else 0 (bad id), 1 (bad value), 2 (no such row)."""
    if i % MALFORMED_EVERY:
        return None
    return (i // MALFORMED_EVERY) % 3


def expected_dead(produced: int) -> int:
    return (produced + MALFORMED_EVERY - 1) // MALFORMED_EVERY if produced > 0 else 0


@functools.lru_cache(maxsize=4)
def expected_bytes(produced: int, nodes: int = NODES) -> dict[int, int]:
    """node id → bytes that must reach SQL after items ``0..produced-1``."""
    totals: dict[int, int] = {}
    for i in range(produced):
        if i % MALFORMED_EVERY:
            node = i % nodes + 1
            totals[node] = totals.get(node, 0) + upload(i) + download(i)
    return totals


# One item on one key, atomically (Redis Cluster's stand-in for MULTI/EXEC):
# HINCRBY upload (HSET when it is not a number: a malformed item), HINCRBY
# download, EXPIRE. KEYS: the counter. ARGV: upload, download, TTL.
_ITEM = """
if tonumber(ARGV[1]) then
  redis.call('HINCRBY', KEYS[1], 'upload', ARGV[1])
else
  redis.call('HSET', KEYS[1], 'upload', ARGV[1])
end
redis.call('HINCRBY', KEYS[1], 'download', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
"""


class TrafficWorkload:
    """The functions behind the `syncd.Workload`, bound to one prefix.

    Attributes:
        prefix: Unique per run; in every key and the table name.
        nodes: Node rows created by ``setup``.
    """

    def __init__(self, prefix: str, nodes: int = NODES) -> None:
        self.prefix = prefix
        self.nodes = nodes
        self.key_pattern = f"{prefix}:node:{{node_id}}:traffic"
        self.table = f"{prefix}_nodes"
        self.dead_letter = f"{prefix}:traffic:dead"
        self.inflight_prefix = f"{prefix}:syncd:inflight:traffic"

    def key(self, node: int | str) -> str:
        return self.key_pattern.replace("{node_id}", str(node))

    @property
    def options(self) -> dict[str, Any]:
        return {
            "key_pattern": self.key_pattern,
            "table": self.table,
            "dead_letter": self.dead_letter,
            "inflight_prefix": self.inflight_prefix,
            "interval": "200ms",
        }

    def workload(self) -> syncd.Workload:
        return syncd.Workload(
            plugin="traffic",
            options=self.options,
            unit="nodes",
            setup=self.setup,
            produce=self.produce,
            pending=self.pending,
            tally=self.tally,
            baseline=self.baseline,
            ceiling=self.ceiling,
            teardown=self.teardown,
        )

    # -- SQL side ------------------------------------------------------------------

    def setup(self, env: syncd.WorkloadEnv) -> None:
        """A fresh nodes table with rows 1..nodes at zero."""
        bigint = "INTEGER" if env.dialect == "sqlite" else "BIGINT"
        with env.connection() as conn:
            cur = conn.cursor()
            cur.execute(f"DROP TABLE IF EXISTS {self.table}")
            cur.execute(f"CREATE TABLE {self.table} (id {bigint} PRIMARY KEY, "
                        "traffic_used BIGINT NOT NULL DEFAULT 0)")
            cur.execute(f"INSERT INTO {self.table} (id) {_sequence_sql(self.nodes)}")
            conn.commit()

    def teardown(self, env: syncd.WorkloadEnv) -> None:
        with env.connection() as conn:
            conn.cursor().execute(f"DROP TABLE IF EXISTS {self.table}")
            conn.commit()
        keys = list(env.redis.scan_iter(match=f"{self.prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            env.redis.delete(*keys[start:start + 1000])

    # -- the application -----------------------------------------------------------

    def produce(self, env: syncd.WorkloadEnv, start: int, count: int) -> None:
        """Items ``start..start+count-1`` exactly as the application writes them.

        Each pipeline runs as one MULTI/EXEC: an item's two fields must land
        in the same flush, or a malformed item split across two snapshots
        would become two dead letters (or a good half and a bad half), and
        the count of dead letters expected would depend on timing.
        """
        if syncd.is_cluster(env.redis):
            self._produce_on_cluster(env, start, count)
            return
        pipe = env.redis.pipeline(transaction=True)
        for n, i in enumerate(range(start, start + count), 1):
            kind = malformed_kind(i)
            if kind is None:
                key = self.key(i % self.nodes + 1)
                pipe.hincrby(key, "upload", upload(i))
                pipe.hincrby(key, "download", download(i))
            elif kind == 0:
                key = self.key(f"n{i}x")
                pipe.hincrby(key, "upload", upload(i))
                pipe.hincrby(key, "download", download(i))
            else:
                # Ids above ``nodes`` have no row; each malformed item its own.
                key = self.key(self.nodes + 1 + i)
                if kind == 1:
                    pipe.hset(key, "upload", f"{upload(i)}kb")
                else:
                    pipe.hincrby(key, "upload", upload(i))
                pipe.hincrby(key, "download", download(i))
            pipe.expire(key, TTL)
            if n % PIPELINE == 0:
                pipe.execute()
        pipe.execute()

    def _produce_on_cluster(self, env: syncd.WorkloadEnv, start: int, count: int) -> None:
        """`produce` on Redis Cluster, where MULTI/EXEC cannot span slots: each
        item is one script on its one key, so its fields still land together."""
        pipe = env.redis.pipeline(transaction=False)
        for n, i in enumerate(range(start, start + count), 1):
            kind = malformed_kind(i)
            if kind is None:
                key, up = self.key(i % self.nodes + 1), str(upload(i))
            elif kind == 0:
                key, up = self.key(f"n{i}x"), str(upload(i))
            else:
                key = self.key(self.nodes + 1 + i)
                up = f"{upload(i)}kb" if kind == 1 else str(upload(i))
            # EVAL by hand: redis-py's cluster pipeline refuses EVALSHA (and .eval).
            pipe.execute_command("EVAL", _ITEM, 1, key, up, download(i), TTL)
            if n % PIPELINE == 0:
                pipe.execute()
        pipe.execute()

    def pending(self, env: syncd.WorkloadEnv) -> int:
        """Counter keys not yet flushed, plus those in a snapshot in flight."""
        waiting = sum(1 for _ in env.redis.scan_iter(
            match=self.key("*"), count=1000, _type="hash"))
        for lane in TrafficConfig(inflight_prefix=self.inflight_prefix).inflight_prefixes:
            waiting += syncd.CounterSnapshots.count_in_flight(env.redis, lane)
        return waiting

    # -- counting ------------------------------------------------------------------

    def tally(self, env: syncd.WorkloadEnv, produced: int) -> syncd.Tally:
        """Bytes per node in SQL against the bytes produced for it."""
        expected = expected_bytes(produced, self.nodes)
        with env.connection() as conn:
            cur = conn.cursor()
            cur.execute(f"SELECT id, traffic_used FROM {self.table} WHERE traffic_used <> 0")
            in_sql = {int(nid): int(used) for nid, used in cur.fetchall()}
            conn.rollback()
        duplicates = lost = 0
        for node in expected.keys() | in_sql.keys():
            diff = in_sql.get(node, 0) - expected.get(node, 0)
            if diff > 0:
                duplicates += diff
            else:
                lost -= diff
        return syncd.Tally(
            produced=produced,
            expected=sum(expected.values()),
            in_sql=sum(in_sql.values()),
            duplicates=duplicates,
            lost=lost,
            expected_dead=expected_dead(produced),
            dead_lettered=int(env.redis.llen(self.dead_letter)),
        )

    # -- the comparisons ---------------------------------------------------------------

    def baseline(self, env: syncd.WorkloadEnv, produced: int) -> None:
        """The seed's algorithm as written: SCAN, then per key HGETALL, UPDATE
        (autocommit) and DEL. It skips keys it cannot parse and leaves them."""
        head, tail = self.key_pattern.split("{node_id}")
        sql = _placeholders(
            env, f"UPDATE {self.table} SET traffic_used = traffic_used + %s WHERE id = %s")
        with env.connection(autocommit=True) as conn:
            cur = conn.cursor()
            for raw in env.redis.scan_iter(match=self.key("*"), count=1000):
                key = raw.decode()
                try:
                    node = int(key[len(head):len(key) - len(tail)])
                    values = env.redis.hgetall(raw)
                    total = int(values.get(b"upload", 0)) + int(values.get(b"download", 0))
                except ValueError:
                    continue  # the seed logs the error and moves on
                cur.execute(sql, (total, node))
                env.redis.delete(raw)

    def ceiling(self, env: syncd.WorkloadEnv, produced: int) -> None:
        """The same per-node rows as one raw batched upsert per 10,000, nothing else."""
        rows = [(node, total) for node, total in expected_bytes(produced, self.nodes).items()]
        with env.connection() as conn:
            cur = conn.cursor()
            for start in range(0, len(rows), CEILING_BATCH):
                chunk = rows[start:start + CEILING_BATCH]
                if env.dialect == "postgresql":
                    cur.execute(
                        f"INSERT INTO {self.table} AS t (id, traffic_used) "
                        "SELECT * FROM unnest(%s::bigint[], %s::bigint[]) ON CONFLICT (id) "
                        "DO UPDATE SET traffic_used = t.traffic_used + EXCLUDED.traffic_used",
                        ([r[0] for r in chunk], [r[1] for r in chunk]))
                elif env.dialect == "mysql":
                    cur.executemany(
                        f"INSERT INTO {self.table} (id, traffic_used) VALUES (%s, %s) "
                        "ON DUPLICATE KEY UPDATE traffic_used = traffic_used + "
                        "VALUES(traffic_used)", chunk)
                else:
                    cur.executemany(
                        f"INSERT INTO {self.table} (id, traffic_used) VALUES (?, ?) "
                        "ON CONFLICT (id) DO UPDATE SET "
                        "traffic_used = traffic_used + excluded.traffic_used", chunk)
                conn.commit()


def _sequence_sql(n: int) -> str:
    """``SELECT`` of the integers 1..n, portable to all three dialects (digit cross join)."""
    digits = " UNION ALL ".join(f"SELECT {d} AS x" for d in range(10))
    width = max(1, len(str(max(n - 1, 0))))
    tables = ", ".join(f"({digits}) d{k}" for k in range(width))
    number = " + ".join(f"{10**k} * d{k}.x" for k in range(width))
    return f"SELECT 1 + {number} AS id FROM {tables} WHERE 1 + {number} <= {n}"


def _placeholders(env: syncd.WorkloadEnv, sql: str) -> str:
    return sql.replace("%s", "?") if env.dialect == "sqlite" else sql


