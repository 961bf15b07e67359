"""A tiny plugin with a workload, for testing the harness itself.

``probe`` moves numbers from a Redis list into a SQL table with the core's
own reliable pieces (`syncd.ReliableQueue`, ``db.apply_batch`` with its
ledger), and dead-letters every item that is not a number. It is exactly
the shape of a real queue plugin, small enough to trust, so the harness's
smoke tests can tell a harness bug from a plugin bug.

The smoke tests make it discoverable through a throwaway ``*.dist-info``
(see `install_probe`): ``syncd serve`` subprocesses find it through its
entry point exactly as they find a real plugin. The tests at the bottom
check the probe and the in-process benchmark on it.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import trio

import syncd
from syncd.harness import BenchOptions, run_bench
from syncd.harness.env import open_env, resolve_databases
from syncd.manager import get_plugin_manager

NAME = "probe"
#: Every item whose number is 7 modulo this is malformed (dead-lettered).
BAD_EVERY = 50


def is_bad(n: int) -> bool:
    return n % BAD_EVERY == 7


def item(n: int) -> bytes:
    return f"bad:{n}".encode() if is_bad(n) else str(n).encode()


# -- the plugin ----------------------------------------------------------------------


@attrs.frozen
class ProbeConfig:
    """Attributes:
    source: The list producers LPUSH numbers to.
    table: The table each number becomes a row of.
    dead: The dead-letter list.
    batch: Items per batch.
    """

    source: str = "probe:in"
    table: str = "probe"
    dead: str = "probe:dead"
    batch: int = 500


class ProbeWorker:
    """Take a batch, insert its numbers under the ledger, ack it with its dead letters."""

    interval = None

    def __init__(self, ctx: syncd.PluginContext) -> None:
        self.ctx = ctx
        self.config: ProbeConfig = ctx.config
        self.queue = syncd.ReliableQueue(ctx.redis, self.config.source, consumer=ctx.instance)
        # One consumer, one batch at a time: flush() and run() take turns.
        self.lock = trio.Lock()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.queue.serve_heartbeat)
            task_status.started()
            while True:
                await self.ctx.gate.wait()
                async with self.lock:
                    batch = await self.queue.take(self.config.batch, max_wait=0.02, block=0.5)
                    if batch is not None:
                        self.ctx.report(await self.apply(batch))

    async def flush(self) -> syncd.SyncResult:
        total = syncd.SyncResult()
        async with self.lock:
            while (batch := await self.queue.take(self.config.batch, 0, 0)) is not None:
                total += await self.apply(batch)
        return total

    async def apply(self, batch: syncd.Batch) -> syncd.SyncResult:
        rows, dead = [], []
        for raw in batch.items:
            if raw.isdigit():
                rows.append((int(raw),))
            else:
                dead.append(syncd.DeadLetter(self.config.dead, raw, "not a number", NAME))
        table = self.config.table

        def write(tx: syncd.Transaction) -> int:
            if rows:
                tx.executemany(f"INSERT INTO {tx.quote(table)} (n) VALUES (%s)", rows)
            return len(rows)

        assert self.ctx.database is not None
        applied, _ = await self.ctx.database.apply_batch(NAME, batch.id, write)
        syncd.crash_point(NAME, "before_ack")
        await self.queue.ack(batch, dead)
        return syncd.SyncResult(
            items=len(rows) if applied else 0, batches=1, dead_lettered=len(dead),
            skipped=0 if applied else len(rows),
        )


@syncd.hookimpl
def syncd_plugin() -> syncd.PluginSpec:
    return syncd.PluginSpec(NAME, ProbeConfig, ProbeWorker,
                            description="harness self-test: numbers from a list into a table")


# -- its workload --------------------------------------------------------------------


def _names(prefix: str) -> ProbeConfig:
    return ProbeConfig(source=f"{prefix}:probe:in", table=f"{prefix}_probe",
                       dead=f"{prefix}:probe:dead")


@syncd.hookimpl
def syncd_workload(plugin: str, prefix: str) -> syncd.Workload | None:
    if plugin != NAME:
        return None
    names = _names(prefix)

    def sql(env: syncd.WorkloadEnv, *statements: str) -> list[tuple[int, ...]]:
        conn = env.connect()
        try:
            cur = conn.cursor()
            for statement in statements:
                cur.execute(statement)
            result = cur.fetchall() if cur.description else []
            conn.commit()
            return list(result)
        finally:
            conn.close()

    def setup(env: syncd.WorkloadEnv) -> None:
        sql(env, f"DROP TABLE IF EXISTS {names.table}",
            f"CREATE TABLE {names.table} (n BIGINT NOT NULL)")

    def teardown(env: syncd.WorkloadEnv) -> None:
        sql(env, f"DROP TABLE IF EXISTS {names.table}")

    def produce(env: syncd.WorkloadEnv, start: int, count: int) -> None:
        with env.redis.pipeline(transaction=False) as pipe:
            for n in range(start, start + count):
                pipe.lpush(names.source, item(n))
            pipe.execute()

    def pending(env: syncd.WorkloadEnv) -> int:
        waiting = env.redis.llen(names.source)
        for key in env.redis.scan_iter(match=f"{names.source}:processing:*", _type="list"):
            waiting += env.redis.llen(key)
        return int(waiting)

    def tally(env: syncd.WorkloadEnv, produced: int) -> syncd.Tally:
        [(rows, distinct)] = sql(env, f"SELECT COUNT(*), COUNT(DISTINCT n) FROM {names.table}")
        bad = sum(1 for n in range(produced) if is_bad(n))
        expected = produced - bad
        return syncd.Tally(
            produced=produced, expected=expected, in_sql=int(distinct),
            duplicates=int(rows) - int(distinct), lost=expected - int(distinct),
            expected_dead=bad, dead_lettered=int(env.redis.llen(names.dead)),
        )

    def baseline(env: syncd.WorkloadEnv, produced: int) -> None:
        # The seeds' way: pop (so a crash here loses the items), insert, commit.
        conn = env.connect()
        try:
            cur = conn.cursor()
            while items := env.redis.rpop(names.source, 500):
                rows = [(int(raw),) for raw in items if raw.isdigit()]
                if rows:
                    cur.executemany(f"INSERT INTO {names.table} (n) VALUES (%s)", rows)
                conn.commit()
        finally:
            conn.close()

    def ceiling(env: syncd.WorkloadEnv, produced: int) -> None:
        rows = [(n,) for n in range(produced) if not is_bad(n)]
        conn = env.connect()
        try:
            conn.cursor().executemany(f"INSERT INTO {names.table} (n) VALUES (%s)", rows)
            conn.commit()
        finally:
            conn.close()

    return syncd.Workload(
        plugin=NAME, options=attrs.asdict(names), unit="numbers", setup=setup,
        produce=produce, pending=pending, tally=tally, baseline=baseline, ceiling=ceiling,
        teardown=teardown,
    )


def install_probe(directory: Path) -> Path:
    """Make ``probe`` an installed plugin for whoever has ``directory`` on its path.

    Writes a minimal ``*.dist-info`` whose entry point names this module;
    the module itself must be importable too (this file's folder on the path).
    """
    dist = directory / "syncd_harness_probe-0.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: syncd-harness-probe\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(f"[syncd]\n{NAME} = {__name__}\n")
    return directory


# -- tests of the probe and of the in-process benchmark ------------------------------


@pytest.fixture(name="probe_pm")
def _probe_pm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SYNCD_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.syspath_prepend(str(install_probe(tmp_path / "site")))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    return get_plugin_manager()


class TestProbe:
    """The probe counts exactly what it is given."""

    def test_discovered_through_its_entry_point(self, probe_pm) -> None:
        from syncd.manager import discover

        assert discover(probe_pm)[NAME].package == "syncd-harness-probe"

    def test_tally_sees_loss_and_duplicates(self, probe_pm, prefix: str) -> None:
        workload = syncd_workload(NAME, prefix)
        assert workload is not None
        [target] = resolve_databases(["pg"])
        with open_env(target.url, prefix) as env:
            workload.setup(env)
            try:
                workload.ceiling(env, 100)
                assert workload.tally(env, 100).in_sql == 98
                # Dead letters missing: not ok.
                assert not workload.tally(env, 100).ok
                workload.ceiling(env, 10)  # rows 0..9 again (7 is bad)
                counted = workload.tally(env, 101)
                assert counted.duplicates == 9
                assert counted.lost == 1  # item 100 never arrived
                assert not counted.ok
            finally:
                workload.teardown(env)


class TestBench:
    """The in-process benchmark runs all three sides and checks the tally."""

    async def test_bench_probe(self, probe_pm) -> None:
        lines: list[str] = []
        rows = await run_bench(
            BenchOptions(plugins=(NAME,), items=2000), pm=probe_pm, progress=lines.append)
        assert [(r.plugin, r.database) for r in rows] == [(NAME, "mysql"), (NAME, "pg")]
        for row in rows:
            assert row.errors == {}
            assert row.tally_ok, row.samples
            assert all(row.rate(side) for side in ("syncd", "baseline", "ceiling"))
        assert any("syncd" in line and "tally ok" in line for line in lines)


class _TwoVariants:
    """The probe's plugin and workload under another name, offered twice."""

    @syncd.hookimpl
    def syncd_plugin(self) -> syncd.PluginSpec:
        return syncd.PluginSpec(name="two", config=ProbeConfig, create=ProbeWorker)

    @syncd.hookimpl
    def syncd_workload(self, plugin: str, prefix: str) -> list[syncd.Workload] | None:
        if plugin != "two":
            return None
        base = syncd_workload(NAME, prefix)
        big = syncd_workload(NAME, f"{prefix}_big")
        assert base is not None and big is not None
        return [attrs.evolve(base, plugin="two"),
                attrs.evolve(big, plugin="two", variant="big", prefix=f"{prefix}_big")]


class TestVariants:
    """A plugin may offer several workloads: each is a subject (a row) of its own."""

    def test_each_variant_is_a_subject_with_its_own_prefix(self) -> None:
        from syncd.harness.env import find_subjects

        subjects = find_subjects(get_plugin_manager([_TwoVariants()], autoload=False), ["two"])
        assert [s.label for s in subjects] == ["two", "two (big)"]
        assert [s.plugin for s in subjects] == ["two", "two"]
        first, second = subjects
        assert second.prefix == f"{first.prefix}_big"
        assert second.workload.options["source"].startswith(second.prefix)


class TestRate:
    """A workload of slow jobs caps what chaos produces for it; the others get ``--rate``."""

    def test_max_rate_caps_the_chaos_rate(self) -> None:
        import random

        from syncd.harness.chaos import ChaosOptions, ChaosRun
        from syncd.harness.env import Subject, Target

        workload = syncd_workload(NAME, "t_rate")
        assert workload is not None

        def run(rate: float, max_rate: float | None) -> ChaosRun:
            subject = Subject(NAME, "t_rate", attrs.evolve(workload, max_rate=max_rate))
            return ChaosRun(subject, Target("pg", "postgresql://x"), ChaosOptions(rate=rate),
                            random.Random(0), lambda line: None, {})

        assert run(2000, 300).rate == 300
        assert run(200, 300).rate == 200
        assert run(2000, None).rate == 2000


class _NoCluster:
    """The probe under another name, declared unable to run on Redis Cluster."""

    @syncd.hookimpl
    def syncd_plugin(self) -> syncd.PluginSpec:
        return syncd.PluginSpec(name="solo", config=ProbeConfig, create=ProbeWorker,
                                redis_cluster=False)

    @syncd.hookimpl
    def syncd_workload(self, plugin: str, prefix: str) -> syncd.Workload | None:
        base = syncd_workload(NAME, prefix) if plugin == "solo" else None
        return None if base is None else attrs.evolve(base, plugin="solo")


class TestClusterRefusal:
    """bench and chaos on a cluster leave out a plugin that declares it cannot run there."""

    def test_skipped_with_the_reason_on_a_cluster_only(self) -> None:
        from syncd.harness.env import runs

        pm = get_plugin_manager([_NoCluster()], autoload=False)
        lines: list[str] = []
        found = list(runs(pm, ["solo"], ["pg"], stem="chaos", progress=lines.append,
                          redis_url="redis+cluster://127.0.0.1:7000"))
        assert found == []
        assert lines == ["[chaos] solo: skipped on Redis Cluster (redis.url: the solo plugin "
                         "does not run on Redis Cluster; give it a single Redis (another syncd "
                         "instance) or disable it)"]
        single = list(runs(pm, ["solo"], ["pg"], stem="chaos", progress=lines.append,
                           redis_url="redis://127.0.0.1:6379/0"))
        assert [(s.plugin, t.name) for s, t in single] == [("solo", "pg")]
