"""The operator's side of the control plane: dead letters, lag, throughput, a plugin's panel.

A whole daemon (real Redis) runs the mailbox test plugin with a token; the
tests talk to it over a real socket with httpx.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import mailbox_plugin
import pytest
import redis
import trio

import syncd
from syncd.testing import daemon_config, run_daemon, wait_for
from syncd.throughput import Throughput

TOKEN = "dead-letter-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@asynccontextmanager
async def mailbox(prefix: str) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    config = daemon_config(
        {"mailbox": {"queue": f"{prefix}:q", "dead_letter": f"{prefix}:dead"}},
        http=True, token=TOKEN)
    async with run_daemon(config, [mailbox_plugin]) as daemon, httpx.AsyncClient(
            base_url=daemon.http_binds[0], timeout=15) as client:
        yield daemon, client


async def quarantined(client: redis.Redis, prefix: str, *items: bytes) -> None:
    """Push ``items`` through the mailbox and wait until each is delivered or dead."""
    before = client.llen(f"{prefix}:dead") + int(client.get(f"{prefix}:q:delivered") or 0)
    client.lpush(f"{prefix}:q", *items)
    await wait_for(lambda: client.llen(f"{prefix}:dead")
                   + int(client.get(f"{prefix}:q:delivered") or 0) == before + len(items),
                   timeout=20)


class TestBrowse:
    """Listing is open to read, newest first, paged, grouped by reason."""

    async def test_list_and_reasons(self, prefix: str, redis_client: redis.Redis) -> None:
        async with mailbox(prefix) as (_, client):
            await quarantined(redis_client, prefix, b"bad1", b"ok", b"bad22", b"badforever")
            page = (await client.get("/plugins/mailbox/dead-letters?limit=2")).json()
            assert page["total"] == 3 and page["lists"] == [f"{prefix}:dead"]
            assert page["requeue_supported"] is True
            assert [i["payload"] for i in page["items"]] == ["badforever", "bad22"]
            assert page["items"][0]["requeue"] == {"ok": False, "reason": "it will never be good"}
            assert page["items"][1]["requeue"] == {"ok": True,
                                                   "to": [f"RPUSH {prefix}:q fixed22"]}
            assert page["items"][1]["source"] == f"{prefix}:q"
            rest = (await client.get("/plugins/mailbox/dead-letters?limit=2&offset=2")).json()
            assert [i["payload"] for i in rest["items"]] == ["bad1"]

            reasons = (await client.get("/plugins/mailbox/dead-letters/reasons")).json()
            assert reasons["total"] == reasons["scanned"] == 3
            assert reasons["reasons"] == [{"reason": "an item of N bytes is bad", "count": 3,
                                           "example": "an item of 10 bytes is bad"}]

    @pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=x", "offset=-1"])
    async def test_bad_paging_is_a_400(self, prefix: str, query: str) -> None:
        async with mailbox(prefix) as (_, client):
            response = await client.get(f"/plugins/mailbox/dead-letters?{query}")
            assert response.status_code == 400, response.text
            assert response.json()["status"] == 400

    async def test_unknown_plugin_is_a_404(self, prefix: str) -> None:
        async with mailbox(prefix) as (_, client):
            assert (await client.get("/plugins/nope/dead-letters")).status_code == 404
            response = await client.post("/plugins/nope/dead-letters/purge", headers=AUTH,
                                         json={"all": True})
            assert response.status_code == 404


class TestReplay:
    """Requeue and purge need the token and a clear selection; the status follows."""

    async def test_requeue_needs_the_token_and_a_selection(
        self, prefix: str, redis_client: redis.Redis,
    ) -> None:
        async with mailbox(prefix) as (_, client):
            await quarantined(redis_client, prefix, b"bad1")
            url = "/plugins/mailbox/dead-letters/requeue"
            assert (await client.post(url, json={"all": True})).status_code == 401
            for body in (None, {}, {"all": True, "oldest": 1}, {"ids": "x"}):
                response = await client.post(url, headers=AUTH, json=body)
                assert response.status_code == 400, (body, response.text)
            response = await client.post(url, headers=AUTH, content=b"{not json")
            assert response.status_code == 400
            assert redis_client.llen(f"{prefix}:dead") == 1

    async def test_requeue_then_purge_and_the_status_shows_it(
        self, prefix: str, redis_client: redis.Redis,
    ) -> None:
        async with mailbox(prefix) as (daemon, client):
            await quarantined(redis_client, prefix, b"bad1", b"bad2", b"badforever")
            await daemon.observer.refresh("mailbox")
            status = (await client.get("/plugins/mailbox")).json()
            assert status["dead_letters"]["waiting"] == 3
            assert status["dead_letters"]["oldest_age_seconds"] >= 0

            ids = {i["payload"]: i["id"] for i in
                   (await client.get("/plugins/mailbox/dead-letters")).json()["items"]}
            answer = (await client.post("/plugins/mailbox/dead-letters/requeue", headers=AUTH,
                                        json={"ids": [ids["bad1"], ids["badforever"]]})).json()
            assert answer["requeued"] == 1 and answer["refused_count"] == 1
            assert answer["refused"] == [{"id": ids["badforever"],
                                          "reason": "it will never be good"}]
            # The requeued item is taken again, fixed, and delivered.
            await wait_for(lambda: redis_client.get(f"{prefix}:q:delivered") == b"1", timeout=20)
            # The requeue refreshed the count at once.
            status = (await client.get("/plugins/mailbox")).json()
            assert status["dead_letters"]["waiting"] == 2

            answer = (await client.post("/plugins/mailbox/dead-letters/purge", headers=AUTH,
                                        json={"oldest": 1})).json()
            assert answer["purged"] == 1
            remaining = (await client.get("/plugins/mailbox/dead-letters")).json()["items"]
            assert [i["payload"] for i in remaining] == ["badforever"]
            answer = (await client.post("/plugins/mailbox/dead-letters/purge", headers=AUTH,
                                        json={"all": True})).json()
            assert answer["purged"] == 1
            sample = daemon.metrics.registry.get_sample_value
            assert sample("syncd_dead_letters", {"plugin": "mailbox"}) == 0
            assert sample("syncd_dead_letter_oldest_age_seconds", {"plugin": "mailbox"}) == 0


class TestStatus:
    """Lag, throughput history and a plugin's own panel reach the status."""

    async def test_lag_throughput_and_metrics(self, prefix: str,
                                              redis_client: redis.Redis) -> None:
        async with mailbox(prefix) as (daemon, client):
            runner = daemon.runner("mailbox")
            await wait_for(lambda: runner.lag == 1.5, timeout=20)
            await quarantined(redis_client, prefix, b"ok1", b"ok2", b"bad")
            runner.throughput = Throughput()
            runner.throughput.sample(trio.current_time() - 10, 0)
            status = (await client.get("/plugins")).json()[0]
            assert status["lag_seconds"] == 1.5
            throughput = status["throughput"]
            assert throughput["every_seconds"] == 5.0
            assert isinstance(throughput["history"], list)
            assert throughput["now"] == pytest.approx(runner.items_synced / 10, rel=0.2)
            text = (await client.get("/metrics")).text
            assert 'syncd_oldest_pending_age_seconds{plugin="mailbox"} 1.5' in text
            assert 'syncd_dead_letters{plugin="mailbox"}' in text

    async def test_panel(self, prefix: str) -> None:
        async with mailbox(prefix) as (_, client):
            panel = (await client.get("/plugins/mailbox/panel")).json()
            assert panel["title"] == "Mailbox" and panel["note"] == "<b>not bold</b>"
            (table,) = panel["tables"]
            assert table["rows"] == [["pokes", 0]]
            assert table["actions"] == [[{"label": "poke", "path": "/mailbox/poke",
                                          "confirm": "Poke the mailbox?"}]]
            assert (await client.post("/mailbox/poke", headers=AUTH)).json() == {"pokes": 1}
            panel = (await client.get("/plugins/mailbox/panel")).json()
            assert panel["tables"][0]["rows"] == [["pokes", 1]]


class TestPanelTypes:
    """A panel is data the page renders as text; its buttons stay on this origin."""

    @pytest.mark.parametrize("path", ["jobs/1", "//evil.example/x", "https://evil.example/",
                                      "/\\evil"])
    def test_actions_only_post_to_local_paths(self, path: str) -> None:
        with pytest.raises(ValueError):
            syncd.Action("retry", path)

    def test_table_actions_match_rows(self) -> None:
        with pytest.raises(ValueError):
            syncd.Table("t", ["a"], rows=[[1], [2]], actions=[[]])
        table = syncd.Table("t", ["a", "b"], rows=[[None, True], [1.5, object]])
        assert table.as_dict()["rows"] == [[None, "true"], [1.5, "<class 'object'>"]]


class TestThroughput:
    """The ring keeps 15 minutes and turns counts into rates."""

    def test_rates_and_now(self) -> None:
        ring = Throughput(keep=3)
        assert ring.now(0.0, 0) is None
        for at, items in [(0.0, 0), (5.0, 50), (10.0, 60), (15.0, 160)]:
            ring.sample(at, items)
        assert ring.rates() == [2.0, 20.0]  # the oldest sample dropped out
        assert ring.now(15.5, 170) == 20.0  # too fresh: the last interval
        assert ring.now(17.0, 180) == 10.0
