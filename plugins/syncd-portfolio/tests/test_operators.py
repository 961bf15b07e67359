"""What an operator sees and does, through syncd's own surfaces: the dead-letter
endpoints and CLI, the status page's plugin status and panel.

Real daemon, real Redis and PostgreSQL, a real npm bullmq producer and a
ganache node behind a front the test can break.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from portfolio_support import FlakyRPC, Ganache, Producer, pg_rows, section
from test_jobs import add, dead_letters, job, portfolio, state_is

from syncd.testing import REDIS_URL, wait_for

TOKEN = "operator-token"


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``syncd dead-letters ...`` as an operator runs it (the installed plugin, a real process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    return subprocess.run([sys.executable, "-m", "syncd", "dead-letters", *args, "-c",
                           str(config)], env=env, capture_output=True, text=True, timeout=60)


async def panel(http: httpx.AsyncClient) -> dict[str, Any]:
    answer = await http.get("/plugins/portfolio/panel")
    assert answer.status_code == 200, answer.text
    return answer.json()


def table(built: dict[str, Any], title: str) -> dict[str, Any]:
    [found] = [t for t in built["tables"] if t["title"].startswith(title)]
    return found


class TestDeadLetters:
    """A job's last failure is listed by the CLI, the HTTP endpoints and the plugin's
    status; a requeue runs it again, to completion."""

    @pytest.mark.slow
    async def test_listed_requeued_and_completed(self, prefix: str, tables: str, pg_url: str,
                                                 ganache: Ganache, tokens: list[str],
                                                 producer: Producer, tmp_path: Path) -> None:
        queue = f"{prefix}_q"
        flaky = FlakyRPC(ganache.url)
        flaky.set("down")
        async with trio.open_nursery() as nursery:
            url = await nursery.start(flaky.serve)
            options = section(prefix, url, attempts=2, backoff="100ms")
            config = tmp_path / "syncd.yaml"
            config.write_text(yaml.safe_dump({
                "redis": {"url": REDIS_URL}, "databases": {"default": pg_url},
                "plugins": {"portfolio": options}}))
            async with portfolio(prefix, pg_url, url, token=TOKEN, attempts=2,
                                 backoff="100ms") as (_, http):
                [job_id] = await add(producer, queue, [
                    {"name": "token-metadata", "data": {"chainId": 1337, "tokens": tokens[:1]}}])
                await wait_for(lambda: state_is(http, job_id, "failed"), timeout=30)
                assert (await job(http, job_id))["attemptsMade"] == 2

                # The HTTP endpoints list it, with the reason and the list's name.
                listed = (await http.get("/plugins/portfolio/dead-letters")).json()
                assert listed["lists"] == [f"{{{queue}}}:dead"]
                assert listed["requeue_supported"] is True
                [item] = listed["items"]
                assert item["requeue"]["ok"] is True
                assert "HTTP 503" in item["reason"]
                assert json.loads(item["payload"])["id"] == job_id
                reasons = (await http.get("/plugins/portfolio/dead-letters/reasons")).json()
                assert reasons["total"] == 1

                # So does the CLI, from the same config, beside the running daemon.
                shown = await trio.to_thread.run_sync(
                    lambda: cli(config, "list", "portfolio", "--json"))
                assert shown.returncode == 0, shown.stderr
                answer = json.loads(shown.stdout)
                assert answer["waiting"] == 1
                assert [i["id"] for i in answer["items"]] == [item["id"]]

                # And the plugin's status, which the status page shows.
                async def counted() -> Any:
                    status = (await http.get("/plugins/portfolio")).json()
                    letters = status.get("dead_letters") or {}
                    return letters.get("waiting") == 1 or letters

                await wait_for(counted, timeout=30)

                # Requeued through the HTTP endpoint: a new job (its id says where it
                # came from) that runs, now that the provider answers, to completion.
                flaky.set("up")
                done = await http.post("/plugins/portfolio/dead-letters/requeue",
                                       json={"all": True})
                assert done.status_code == 200, done.text
                assert done.json()["requeued"] == 1
                again = f"{job_id}-r{round(item['at'] * 1000)}"  # see requeue.py
                await wait_for(lambda: state_is(http, again, "completed"), timeout=30)
                seen = await job(http, again)
                assert seen["name"] == "token-metadata"
                assert seen["data"] == {"chainId": 1337, "tokens": tokens[:1]}
                assert dead_letters(queue) == []
                assert (await http.get("/plugins/portfolio/dead-letters")).json()["total"] == 0
                rows = dict(pg_rows(pg_url, f'SELECT id, state FROM "{prefix}_jobs"'))
                assert rows == {job_id: "failed", again: "completed"}
                counts = await trio.to_thread.run_sync(producer.counts, queue)
                assert (counts["completed"], counts["failed"]) == (1, 1)
            nursery.cancel_scope.cancel()


class TestPanel:
    """The status page's panel: jobs by state, what runs here, circuits, paused or not."""

    async def test_panel_through_the_status_endpoint(
            self, prefix: str, tables: str, pg_url: str, ganache: Ganache, tokens: list[str],
            producer: Producer) -> None:
        queue = f"{prefix}_q"
        flaky = FlakyRPC(ganache.url)
        flaky.set("hang")
        async with trio.open_nursery() as nursery:
            url = await nursery.start(flaky.serve)
            async with portfolio(prefix, pg_url, url, token=TOKEN, grace="2s") as (_, http):
                [held, waiting] = await add(producer, queue, [
                    {"name": "token-metadata", "data": {"chainId": 1337, "tokens": tokens[:1]}},
                    {"name": "token-metadata", "data": {"chainId": 1337, "tokens": tokens[1:2]},
                     "opts": {"delay": 600_000}}])
                await wait_for(lambda: state_is(http, held, "active"), timeout=30)

                async def shows_running() -> Any:
                    built = await panel(http)
                    rows = table(built, "Running")["rows"]
                    return (rows and rows[0][0] == held) or built

                await wait_for(shows_running, timeout=30)
                built = await panel(http)
                assert built["title"] == f"Portfolio jobs: queue {queue}"
                counts = dict(map(tuple, table(built, "Jobs by state")["rows"]))
                assert counts["active"] == 1 and counts["delayed"] == 1, counts
                [running] = table(built, "Running")["rows"]
                assert running[1:3] == ["token-metadata", 1]
                [circuit] = table(built, "Circuit breakers")["rows"]
                assert circuit[0] == url and circuit[1] == "closed"
                assert "taking jobs" in built["note"] and "queue: not paused" in built["note"]
                paths = [a["path"] for a in built["actions"]]
                assert paths == ["/workers/pause", "/workers/pause?scope=queue"]

                # Its buttons are the plugin's routes; after a pause the panel says so.
                answer = await http.post("/workers/pause")
                assert answer.status_code == 200, answer.text
                answer = await http.post("/workers/pause?scope=queue")
                assert answer.status_code == 200, answer.text
                built = await panel(http)
                assert "): paused" in built["note"] and "queue: paused" in built["note"]
                assert [a["path"] for a in built["actions"]] == [
                    "/workers/resume", "/workers/resume?scope=queue"]
                assert (await http.post("/workers/resume?scope=queue")).status_code == 200
                assert waiting
            nursery.cancel_scope.cancel()
