"""The messages database writer against the raw COPY ceiling, side by side, many rounds.

Run: ``.venv/bin/python bench/messages_ceiling.py [-n 200000] [--rounds 5] [--batch-size N]``
(``--profile FILE``: py-spy samples the thread holding the GIL during the
syncd side into ``FILE.<round>.txt``, collapsed stacks; needs ``pip install
py-spy`` in the venv).

``syncd bench`` also times the seed's algorithm, about 7 minutes a round at
200,000 messages; this times only the two sides of the ceiling ratio, each
round syncd then ceiling on the same rows, exactly as ``syncd bench`` does
(`syncd.harness.bench.time_syncd` and the workload's ``ceiling``), and
prints each round's ratio and the median of the ratios: on a shared 2-core
machine, one round's ratio swings with the load of the moment (0.26..1.00
was seen), and a ratio of the two sides measured seconds apart is what
drifts least. It also prints the CPU time this process spent per message on
each side, and what Redis (``INFO cpu``) and every PostgreSQL process
(``/proc/<pid>/stat`` of each ``postgres``, the WAL writer's fsyncs
included) spent per message meanwhile: the three together, divided by the
machine's cores, bound how fast either side can go, however well it overlaps.

A benchmark, not a test: nothing is asserted but the tally.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid

import attrs
import trio
from syncd_messages.workload import messages_workloads

from syncd.harness.bench import BenchOptions, produce, reset_workload, time_syncd
from syncd.harness.env import DATABASES, Target, open_env
from syncd.manager import get_plugin_manager
from syncd.workload import WorkloadEnv


async def main(n: int, rounds: int, database: str, profile: str | None,
               batch_size: int | None) -> None:
    target = Target(database, DATABASES[database])
    prefix = f"mceil{uuid.uuid4().hex[:6]}"
    workload = messages_workloads(prefix, receiver=False)[0]
    if batch_size is not None:
        workload = attrs.evolve(workload, options={**workload.options, "batch_size": batch_size})
    options = BenchOptions(plugins=("messages",), databases=(database,), items=n)
    pm = get_plugin_manager()
    ratios: list[float] = []
    rates: dict[str, list[float]] = {"syncd": [], "ceiling": []}
    per: dict[str, list[tuple[float, float, float]]] = {"syncd": [], "ceiling": []}
    with open_env(target.url, prefix) as env:
        try:
            for round_ in range(1, rounds + 1):
                await trio.to_thread.run_sync(reset_workload, workload, env, True)
                await trio.to_thread.run_sync(produce, workload, env, 0, n)
                spy = None
                if profile:
                    spy = subprocess.Popen(  # noqa: ASYNC220 (a profiler, started once)
                        [os.path.join(os.path.dirname(sys.executable), "py-spy"), "record",
                         "-p", str(os.getpid()), "--gil", "-r", "200", "-o",
                         f"{profile}.{round_}.txt", "-f", "raw"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    await trio.sleep(1)
                before = _usage(env)
                seconds, tally, _ = await time_syncd(workload, env, target, options, pm)
                after = _usage(env)
                # time_syncd ends with a tally (a scan of the table): once
                # more, to subtract its CPU (here and in PostgreSQL).
                await trio.to_thread.run_sync(workload.tally, env, n)
                syncd_cpu = _minus(_minus(after, before), _minus(_usage(env), after))
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait()
                assert tally.ok, tally
                await trio.to_thread.run_sync(reset_workload, workload, env, True)
                started, before = time.perf_counter(), _usage(env)
                await trio.to_thread.run_sync(workload.ceiling, env, n)
                ceiling = time.perf_counter() - started
                ceiling_cpu = _minus(_usage(env), before)
                rates["syncd"].append(n / seconds)
                rates["ceiling"].append(n / ceiling)
                ratios.append(ceiling / seconds)
                per["syncd"].append(syncd_cpu)
                per["ceiling"].append(ceiling_cpu)
                print(f"round {round_}: syncd {n / seconds:,.0f}/s, ceiling {n / ceiling:,.0f}/s,"
                      f" ratio {ratios[-1]:.2f}; CPU µs per message (this process + Redis +"
                      f" PostgreSQL): syncd {_us(syncd_cpu, n)}, ceiling {_us(ceiling_cpu, n)}",
                      flush=True)
        finally:
            await trio.to_thread.run_sync(reset_workload, workload, env, False)
    print(f"median: syncd {statistics.median(rates['syncd']):,.0f}/s, ceiling "
          f"{statistics.median(rates['ceiling']):,.0f}/s; median of per-round ratios "
          f"{statistics.median(ratios):.2f} (rounds {', '.join(f'{r:.2f}' for r in ratios)}); "
          f"load average {os.getloadavg()[0]:.1f}")
    cores = os.cpu_count() or 1
    for side in ("syncd", "ceiling"):
        parts = [statistics.median(cpu[k] for cpu in per[side]) / n * 1e6 for k in range(3)]
        # Each message needs all three: even with every core busy all the
        # time, no faster than this.
        best = cores / sum(parts) * 1e6
        print(f"{side}: CPU µs per message, medians: this process {parts[0]:.2f}, Redis "
              f"{parts[1]:.2f}, PostgreSQL {parts[2]:.2f}; together {sum(parts):.2f} µs, so on "
              f"{cores} cores at most {best:,.0f}/s even with no core ever idle", flush=True)


def _usage(env: WorkloadEnv) -> tuple[float, float, float]:
    """CPU seconds so far of this process, Redis (its ``INFO cpu``) and every PostgreSQL process."""
    info = env.redis.info("cpu")
    pg = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                head, _, rest = f.read().rpartition(")")
        except OSError:
            continue  # gone meanwhile
        if head.endswith("(postgres"):
            fields = rest.split()
            # utime, stime, and those of its exited children: the
            # postmaster's are the backends that served a connection
            # which has closed since (a live one counts in its own).
            pg += sum(int(field) for field in fields[11:15]) / TICKS
    return _cpu(), float(info["used_cpu_user"]) + float(info["used_cpu_sys"]), pg


def _us(cpu: tuple[float, ...], n: int) -> str:
    return " + ".join(f"{seconds / n * 1e6:.1f}" for seconds in cpu)


def _minus(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, float, float]:
    x, y, z = (p - q for p, q in zip(a, b, strict=True))
    return x, y, z


TICKS = os.sysconf("SC_CLK_TCK")


def _cpu() -> float:
    """CPU seconds of this process (every thread), user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--database", default="pg", choices=["pg"])
    parser.add_argument("--profile", default=None)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="the plugin's batch_size (default: the plugin's default, 1000)")
    args = parser.parse_args()
    trio.run(main, args.n, args.rounds, args.database, args.profile, args.batch_size)
