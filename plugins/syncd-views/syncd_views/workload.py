"""Test data for ``syncd bench`` / ``syncd chaos``: view counters as the application makes them.

Item ``i`` is a view report: ``INCRBY vod:views:vod_{i % vods + 1} count(i)``
(1 to 3 views), pipelined. Every 97th item is malformed instead, in turn: a
value that is not an integer (``SET … 12abc``), a VOD with no row, and a key
whose id is not UTF-8. Each malformed item has a key of its own, so each
becomes exactly one dead letter however the flushes fall.

Everything is synchronous and uses only the plain clients in `syncd.WorkloadEnv`.
"""

from __future__ import annotations

import functools
from typing import Any

import syncd

#: VOD rows created by ``setup``: a 100,000-item run touches 100,000 counters,
#: the size of the benchmark issue 13 asks for.
VODS = 100_000
MALFORMED_EVERY = 97
#: Items per Redis pipeline round trip in ``produce``.
PIPELINE = 2_000
#: Rows per statement for the ceiling's raw update.
CEILING_BATCH = 10_000


def count(i: int) -> int:
    return 1 + i % 3


def malformed_kind(i: int) -> int | None:
    """None for a good item, else 0 (bad value), 1 (no such row), 2 (id not UTF-8)."""
    if i % MALFORMED_EVERY:
        return None
    return (i // MALFORMED_EVERY) % 3


def expected_dead(produced: int) -> int:
    return (produced + MALFORMED_EVERY - 1) // MALFORMED_EVERY if produced > 0 else 0


def vod(n: int) -> str:
    return f"vod_{n}"


@functools.lru_cache(maxsize=4)
def expected_views(produced: int, vods: int = VODS) -> dict[str, int]:
    """VOD id → views that must reach SQL after items ``0..produced-1``."""
    totals: dict[str, int] = {}
    for i in range(produced):
        if i % MALFORMED_EVERY:
            name = vod(i % vods + 1)
            totals[name] = totals.get(name, 0) + count(i)
    return totals


class ViewsWorkload:
    """The functions behind the `syncd.Workload`, bound to one prefix.

    Attributes:
        prefix: Unique per run; in every key, channel and the table name.
        vods: VOD rows created by ``setup``.
    """

    def __init__(self, prefix: str, vods: int = VODS) -> None:
        self.prefix = prefix
        self.vods = vods
        self.key_pattern = f"{prefix}:vod:views:*"
        self.table = f"{prefix}_vods"
        self.dead_letter = f"{prefix}:views:dead"
        self.inflight_prefix = f"{prefix}:syncd:inflight:views"
        self.channel = f"{prefix}:view_count_updates"
        self.totals_channel = f"{prefix}:view_count_totals"

    def key(self, vod_id: str | bytes) -> str | bytes:
        head = f"{self.prefix}:vod:views:"
        return head.encode() + vod_id if isinstance(vod_id, bytes) else head + vod_id

    @property
    def options(self) -> dict[str, Any]:
        return {
            "key_pattern": self.key_pattern,
            "table": self.table,
            "dead_letter": self.dead_letter,
            "inflight_prefix": self.inflight_prefix,
            "channel": self.channel,
            "totals_channel": self.totals_channel,
            "interval": "200ms",
        }

    def workload(self) -> syncd.Workload:
        return syncd.Workload(
            plugin="views",
            options=self.options,
            unit="vods",
            setup=self.setup,
            produce=self.produce,
            pending=self.pending,
            tally=self.tally,
            baseline=self.baseline,
            ceiling=self.ceiling,
            teardown=self.teardown,
            dialects=("postgresql", "mysql", "sqlite"),
        )

    # -- SQL side ------------------------------------------------------------------

    def setup(self, env: syncd.WorkloadEnv) -> None:
        """A fresh vods table with rows vod_1..vod_N at zero views."""
        name = "'vod_' || n" if env.dialect == "sqlite" else "CONCAT('vod_', n)"
        with env.connection() as conn:
            cur = conn.cursor()
            cur.execute(f"DROP TABLE IF EXISTS {self.table}")
            cur.execute(f"CREATE TABLE {self.table} (id VARCHAR(191) PRIMARY KEY, "
                        "views BIGINT NOT NULL DEFAULT 0)")
            cur.execute(f"INSERT INTO {self.table} (id) SELECT {name} FROM "
                        f"({_sequence_sql(self.vods)}) AS s")
            conn.commit()

    def teardown(self, env: syncd.WorkloadEnv) -> None:
        with env.connection() as conn:
            conn.cursor().execute(f"DROP TABLE IF EXISTS {self.table}")
            conn.commit()
        keys = list(env.redis.scan_iter(match=f"{self.prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            env.redis.delete(*keys[start:start + 1000])

    # -- the application -----------------------------------------------------------

    def produce(self, env: syncd.WorkloadEnv, start: int, count_: int) -> None:
        """Items ``start..start+count-1`` exactly as the application writes them."""
        pipe = env.redis.pipeline(transaction=False)
        for n, i in enumerate(range(start, start + count_), 1):
            kind = malformed_kind(i)
            if kind is None:
                pipe.incrby(self.key(vod(i % self.vods + 1)), count(i))
            elif kind == 0:
                pipe.set(self.key(f"bad_{i}"), f"{count(i)}abc")
            elif kind == 1:
                pipe.incrby(self.key(f"missing_{i}"), count(i))
            else:
                pipe.incrby(self.key(b"\xff" + str(i).encode()), count(i))
            if n % PIPELINE == 0:
                pipe.execute()
        pipe.execute()

    def publish(self, env: syncd.WorkloadEnv, start: int, count_: int) -> int:
        """The same views as pub/sub updates (good items only); returns how many
        were published while a subscriber listened (PUBLISH's answer)."""
        pipe = env.redis.pipeline(transaction=False)
        heard = 0
        for n, i in enumerate(range(start, start + count_), 1):
            if malformed_kind(i) is None:
                pipe.publish(self.channel, f'{{"vodId":"{vod(i % self.vods + 1)}",'
                                           f'"count":{count(i)}}}')
            if n % PIPELINE == 0:
                heard += sum(pipe.execute())
        heard += sum(pipe.execute())
        return heard

    def pending(self, env: syncd.WorkloadEnv) -> int:
        """Counter keys not yet flushed, plus those in a snapshot in flight."""
        waiting = sum(1 for _ in env.redis.scan_iter(
            match=self.key_pattern, count=1000, _type="string"))
        spec_prefixes = [f"{self.inflight_prefix}:{lane}" for lane in range(2)]
        for lane in spec_prefixes:
            waiting += syncd.CounterSnapshots.count_in_flight(env.redis, lane)
        return waiting

    # -- counting ------------------------------------------------------------------

    def in_sql(self, env: syncd.WorkloadEnv) -> dict[str, int]:
        with env.connection() as conn:
            cur = conn.cursor()
            cur.execute(f"SELECT id, views FROM {self.table} WHERE views <> 0")
            rows = {str(vid): int(views) for vid, views in cur.fetchall()}
            conn.rollback()
        return rows

    def tally(self, env: syncd.WorkloadEnv, produced: int) -> syncd.Tally:
        """Views per VOD in SQL against the views produced for it."""
        expected = expected_views(produced, self.vods)
        in_sql = self.in_sql(env)
        duplicates = lost = 0
        for name in expected.keys() | in_sql.keys():
            diff = in_sql.get(name, 0) - expected.get(name, 0)
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
        """The seed's algorithm: SCAN, then per key GET, UPDATE (autocommit), DEL.
        It skips keys it cannot parse and leaves them."""
        head = self.key_pattern[:-1]
        sql = f"UPDATE {self.table} SET views = views + %s WHERE id = %s"
        if env.dialect == "sqlite":
            sql = sql.replace("%s", "?")
        with env.connection(autocommit=True) as conn:
            cur = conn.cursor()
            for raw in env.redis.scan_iter(match=self.key_pattern, count=1000):
                try:
                    vod_id = raw.decode()[len(head):]
                    views = int(env.redis.get(raw) or 0)
                except ValueError:
                    continue  # the seed logs the error and moves on
                cur.execute(sql, (views, vod_id))
                env.redis.delete(raw)

    def ceiling(self, env: syncd.WorkloadEnv, produced: int) -> None:
        """The same increments, one raw ``UPDATE … FROM unnest(…)`` per 10,000
        (MySQL: one multi-row upsert; SQLite: executemany), nothing else."""
        rows = sorted(expected_views(produced, self.vods).items())
        with env.connection() as conn:
            cur = conn.cursor()
            for start in range(0, len(rows), CEILING_BATCH):
                chunk = rows[start:start + CEILING_BATCH]
                if env.dialect == "postgresql":
                    cur.execute(
                        f"UPDATE {self.table} AS t SET views = t.views + v.d "
                        "FROM unnest(%s::text[], %s::bigint[]) AS v(k, d) WHERE t.id = v.k",
                        ([r[0] for r in chunk], [r[1] for r in chunk]))
                elif env.dialect == "mysql":
                    cur.executemany(
                        f"INSERT INTO {self.table} (id, views) VALUES (%s, %s) "
                        "ON DUPLICATE KEY UPDATE views = views + VALUES(views)", chunk)
                else:
                    cur.executemany(
                        f"UPDATE {self.table} SET views = views + ? WHERE id = ?",
                        [(d, k) for k, d in chunk])
                conn.commit()


def _sequence_sql(n: int) -> str:
    """``SELECT n`` for n in 1..n, portable to all three dialects (digit cross join)."""
    digits = " UNION ALL ".join(f"SELECT {d} AS x" for d in range(10))
    width = max(1, len(str(max(n - 1, 0))))
    tables = ", ".join(f"({digits}) d{k}" for k in range(width))
    number = " + ".join(f"{10**k} * d{k}.x" for k in range(width))
    return f"SELECT 1 + {number} AS n FROM {tables} WHERE 1 + {number} <= {n}"



