"""``syncd bench``: syncd against the seed's algorithm and the database's ceiling.

For each plugin x database, on the same N items in the same run:

syncd
    N items are produced into Redis first; then the real daemon (built
    in-process with only that plugin enabled) starts, and the clock runs
    until the workload reports nothing pending; the tally is then taken
    (untimed: counting rows is the harness's work) and must be exact.
    Interval plugins are flushed through their runner in a loop, as the
    timer would. Start-up (connecting, recovery) is inside the timing: it is
    part of what a user waits for.
baseline
    The same N items, re-produced after a reset, moved by the seed's own
    algorithm (the workload's ``baseline``).
ceiling
    The same rows written straight to the database (the workload's
    ``ceiling``), with nothing else in the way: no Redis, no ledger.

The sides run interleaved (syncd, baseline, ceiling, syncd, ...) ``repeat``
times and each rate is the median, because a noisy machine drifts: ratios
taken minutes apart would measure the drift.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import pluggy
import trio

from syncd.harness.env import (
    REDIS_URL,
    Subject,
    Target,
    clear_keys,
    open_env,
    runs,
)
from syncd.harness.report import SIDES, BenchRow, Sample
from syncd.supervisor import unwrap
from syncd.workload import Tally, Workload, WorkloadEnv

Progress = Callable[[str], None]

#: Items per ``produce`` call: big enough to pipeline well, small enough to show progress.
PRODUCE_CHUNK = 10_000
#: How often the drain loop asks ``pending`` (seconds).
POLL = 0.01
#: After ``pending`` reaches 0, how long a wrong tally may take to become right
#: (a plugin whose ``pending`` does not see its last batch in flight).
SETTLE = 5.0


@attrs.frozen
class BenchOptions:
    """What ``syncd bench`` was asked for.

    Attributes:
        plugins: Plugin names (empty: every installed plugin with a workload).
        databases: ``pg``, ``mysql`` or URLs (empty: both defaults).
        items: Items per run.
        repeat: Rounds of syncd → baseline → ceiling.
        redis_url: The Redis everything runs on.
        timeout: Longest a syncd run may take to drain (seconds).
    """

    plugins: tuple[str, ...] = ()
    databases: tuple[str, ...] = ()
    items: int = 20_000
    repeat: int = 1
    redis_url: str = REDIS_URL
    timeout: float = 600.0

    def meta(self) -> dict[str, Any]:
        return {"items": self.items, "repeat": self.repeat}


async def run_bench(
    options: BenchOptions,
    *,
    pm: pluggy.PluginManager | None = None,
    progress: Progress = lambda line: None,
) -> list[BenchRow]:
    """Benchmark every requested plugin on every requested database."""
    from syncd.manager import get_plugin_manager

    pm = pm or get_plugin_manager()
    return [
        await bench_one(subject, target, options, pm, progress)
        for subject, target in runs(pm, options.plugins, options.databases,
                                    stem="bench", progress=progress,
                                    redis_url=options.redis_url)
    ]


async def bench_one(
    subject: Subject, target: Target, options: BenchOptions, pm: pluggy.PluginManager,
    progress: Progress,
) -> BenchRow:
    workload = subject.workload
    row = BenchRow(subject.label, target.name, target.dialect, workload.unit, options.items)
    label = f"{subject.label}/{target.name}"
    with open_env(target.url, subject.prefix, options.redis_url) as env:
        try:
            for round_ in range(1, options.repeat + 1):
                for side in SIDES:
                    if _missing(workload, side):
                        continue
                    try:
                        sample = await _measure(side, workload, env, target, options, pm)
                    except Exception as exc:
                        error = unwrap(exc)
                        row.fail(side, f"{type(error).__name__}: {error}")
                        progress(f"[bench] {label} round {round_}/{options.repeat} {side}: "
                                 f"FAILED {row.errors[side][-1]}")
                        continue
                    row.samples.append(sample)
                    progress(f"[bench] {label} round {round_}/{options.repeat} "
                             f"{_describe(sample, workload.unit)}")
        finally:
            await trio.to_thread.run_sync(reset_workload, workload, env, False)
    return row


def _missing(workload: Workload, side: str) -> bool:
    return side != "syncd" and getattr(workload, side) is None


def _describe(sample: Sample, unit: str) -> str:
    text = (f"{sample.side:<8} {sample.items:,} {unit} in {sample.seconds:.3f} s "
            f"= {sample.rate:,.0f}/s")
    if sample.startup is not None:
        text += f" (start-up {sample.startup:.3f} s)"
    if sample.tally is not None:
        text += " (tally ok)" if sample.tally.ok else f" (TALLY WRONG: {sample.tally})"
    return text


async def _measure(
    side: str, workload: Workload, env: WorkloadEnv, target: Target, options: BenchOptions,
    pm: pluggy.PluginManager,
) -> Sample:
    n = options.items
    await trio.to_thread.run_sync(reset_workload, workload, env, True)
    if side != "ceiling":
        await trio.to_thread.run_sync(produce, workload, env, 0, n)
    if side == "syncd":
        seconds, tally, startup = await time_syncd(workload, env, target, options, pm)
        return Sample(side, n, seconds, tally, startup)
    fn = workload.baseline if side == "baseline" else workload.ceiling
    assert fn is not None
    started = time.perf_counter()
    await trio.to_thread.run_sync(fn, env, n)
    return Sample(side, n, time.perf_counter() - started)


def reset_workload(workload: Workload, env: WorkloadEnv, setup: bool) -> None:
    """Forget the previous run: our keys, then the workload's own tables."""
    clear_keys(env.redis, env.prefix)
    if workload.teardown is not None:
        workload.teardown(env)
    if setup:
        workload.setup(env)


def produce(workload: Workload, env: WorkloadEnv, start: int, count: int) -> None:
    """Items ``start .. start+count-1``, in chunks."""
    end = start + count
    while start < end:
        step = min(PRODUCE_CHUNK, end - start)
        workload.produce(env, start, step)
        start += step


def daemon_config(workload: Workload, target: Target, redis_url: str) -> dict[str, Any]:
    """Only this plugin, on only this database, no control plane."""
    return {
        "redis": {"url": redis_url},
        "databases": {target.name: target.url},
        "http": {"enabled": False},
        "shutdown_grace": "30s",
        "restart_backoff_max": "1s",
        "instance": f"bench-{uuid.uuid4().hex[:8]}",
        "plugins": {workload.plugin: {**dict(workload.options), "database": target.name}},
    }


async def time_syncd(
    workload: Workload, env: WorkloadEnv, target: Target, options: BenchOptions,
    pm: pluggy.PluginManager,
) -> tuple[float, Tally, float]:
    """Run the daemon on pre-loaded items: seconds until drained and counted
    exactly, the tally, and the seconds of that it took to start."""
    from syncd.config import parse_config
    from syncd.daemon import Daemon

    config = parse_config(daemon_config(workload, target, options.redis_url))
    daemon = Daemon.build(config, pm)
    async with trio.open_nursery() as nursery:
        started = time.perf_counter()
        await nursery.start(daemon.serve)
        startup = time.perf_counter() - started
        try:
            with trio.fail_after(options.timeout):
                tally, drained = await drain(daemon, workload, env, options.items)
            return drained - started, tally, startup
        except trio.TooSlowError:
            runner = daemon.runner(workload.plugin)
            last = runner.last_error if runner is not None else None
            raise TimeoutError(f"syncd did not drain within {options.timeout:.0f} s "
                               f"(last error: {last})") from None
        finally:
            daemon.request_shutdown()


async def drain(
    daemon: Any, workload: Workload, env: WorkloadEnv, produced: int
) -> tuple[Tally, float]:
    """Wait until nothing is pending and the tally is exact (or has settled wrong).

    Returns the tally and the `time.perf_counter` moment nothing was pending
    any more: that ends syncd's time, since counting the rows (a scan of the
    whole table) is the harness's work, not syncd's.
    """
    from syncd.supervisor import NotRunning

    runner = daemon.runner(workload.plugin)
    settle_until: float | None = None
    while True:
        worker = runner.worker
        if worker is not None and worker.interval:
            # The timer would flush eventually; the benchmark flushes now, as
            # often as it can: that is the plugin's drain rate.
            try:
                await runner.flush()
            except NotRunning:
                await trio.sleep(POLL)
            except Exception:
                await trio.sleep(POLL)  # recorded in runner.last_error; the daemon retries
        if await trio.to_thread.run_sync(workload.pending, env) == 0:
            drained = time.perf_counter()
            tally = await trio.to_thread.run_sync(workload.tally, env, produced)
            now = trio.current_time()
            settle_until = settle_until or now + SETTLE
            if tally.ok or now >= settle_until:
                return tally, drained
        else:
            settle_until = None
        await trio.sleep(POLL)
