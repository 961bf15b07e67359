"""Exclusive plugins: how long until a standby replica runs the plugin when the holder goes.

Run: ``.venv/bin/python bench/lease_takeover.py [--plugin traffic] [--database pg|mysql]
[--ttl 10] [--rounds 5]``

Two ``syncd serve`` processes run the plugin (its workload's keys and table)
with ``lease_ttl`` ``--ttl``. Each round, the replica holding the lease is
either SIGKILLed (it hands nothing back: the other waits for the lease to
expire) or SIGTERMed (it hands the lease back after its final flush), and
the time from the signal to the other replica's ``lease acquired`` log line
is measured (log time stamps, same clock); then the stopped one is started
again and stands by. Prints min / median / max per way of going.

A benchmark, not a test: nothing is asserted. Expected: a SIGKILLed holder
is replaced between two thirds of the ttl and the whole ttl after it (its
last renewal came at most a third of the ttl before it died) plus a
database round trip; a SIGTERMed one within a third of the ttl.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import trio

from syncd.harness.chaos import SyncdProcess, free_port, http
from syncd.harness.env import DATABASES, REDIS_URL, clear_keys, find_subjects, open_env
from syncd.manager import get_plugin_manager


def replica(tmp: Path, subject, database: str, name: str, ttl: float) -> SyncdProcess:
    port = free_port()
    config = {
        "redis": {"url": REDIS_URL},
        "databases": {database: DATABASES[database]},
        "http": {"enabled": True, "listen": f"127.0.0.1:{port}"},
        "lease_ttl": f"{ttl:g}s",
        "instance": name,
        "plugins": {subject.plugin: {**dict(subject.workload.options), "database": database}},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    return SyncdProcess(path, port, tmp / f"{name}.log", env)


async def holder(procs: list[SyncdProcess], plugin: str) -> SyncdProcess:
    while True:
        for proc in procs:
            try:
                status = await http(proc.url, "GET", f"/plugins/{plugin}")
            except Exception:
                continue
            if status["lease"]["held"] and status["state"] == "running":
                return proc
        await trio.sleep(0.05)


def acquisitions(proc: SyncdProcess) -> list[float]:
    stamps = []
    for line in proc.log.read_text().splitlines():
        if 'msg="lease acquired"' in line:
            stamp = line.split()[0].removeprefix("ts=")
            stamps.append(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    return stamps


async def main(plugin: str, database: str, ttl: float, rounds: int) -> None:
    subject = find_subjects(get_plugin_manager(), [plugin], stem="takeover")[0]
    results: dict[str, list[float]] = {"SIGKILL": [], "SIGTERM": []}
    with tempfile.TemporaryDirectory() as folder, \
            open_env(DATABASES[database], subject.prefix) as env:
        tmp = Path(folder)
        subject.workload.setup(env)
        procs = [replica(tmp, subject, database, name, ttl) for name in ("one", "two")]
        try:
            for proc in procs:
                await proc.start()
            for n in range(2 * rounds):
                how = signal.SIGKILL if n % 2 == 0 else signal.SIGTERM
                gone = await holder(procs, plugin)
                other = procs[1 - procs.index(gone)]
                before = len(acquisitions(other))
                # Right after a renewal would be the worst case; any moment will do.
                await trio.sleep(ttl * (0.1 + 0.25 * (n % 3)))
                sent = time.time()
                gone.process.send_signal(how)
                await gone.process.wait()
                # Another process's log file: nothing to wait on but the file.
                while len(acquisitions(other)) == before:  # noqa: ASYNC110
                    await trio.sleep(0.05)
                took = acquisitions(other)[-1] - sent
                results[how.name].append(took)
                print(f"{how.name}: taken over after {took:.2f} s", flush=True)
                await gone.start()
        finally:
            for proc in procs:
                await proc.kill()
                proc.close()
            subject.workload.teardown(env)
            clear_keys(env.redis, subject.prefix)
    for how, took in results.items():
        print(f"{how} (lease_ttl {ttl:g} s, {len(took)} rounds): min {min(took):.2f} s, "
              f"median {statistics.median(took):.2f} s, max {max(took):.2f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plugin", default="traffic")
    parser.add_argument("--database", default="pg", choices=sorted(DATABASES))
    parser.add_argument("--ttl", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    trio.run(main, args.plugin, args.database, args.ttl, args.rounds)
