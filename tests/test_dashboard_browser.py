"""The status page in a real browser (Chromium driven by Playwright) against a real daemon.

One ``syncd serve`` process runs for the module with the traffic plugin
(PostgreSQL), the votes plugin and the mailbox test plugin (installed
through a dist-info with an entry point, as a package would be), and a
token. One Chromium runs for the module; each test gets a fresh context, so
its own ``sessionStorage``. Playwright's sync API runs in the test's thread;
every wait is Playwright's own ``expect`` or a polled condition with a
generous bound, never a sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
import yaml

from syncd.testing import PG_URL, REDIS_URL, delete_keys, unique_prefix, wait_for_sync

playwright = pytest.importorskip("playwright.sync_api", reason="install syncd[test]")
from playwright.sync_api import Browser, Page, expect  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("SYNCD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TOKEN = "browser-test-token"
TESTS = Path(__file__).parent
#: Nodes with a row in the test's table; counters for other ids are dead-lettered.
NODES = 10
WAIT_MS = 15_000


@pytest.fixture(scope="module", name="browser")
def _browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: ./scripts/test installs Debian's chromium "
                    "(or point SYNCD_TEST_CHROMIUM at one)")
    # Playwright's sync API runs a plain asyncio loop in this thread. Once
    # trio-asyncio is imported (the daemon imports it), a new loop made
    # outside Trio is trio-asyncio's own unless a policy is set for the
    # thread: set asyncio's default for as long as the browser lives.
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    try:
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        asyncio.set_event_loop_policy(None)


class Syncd:
    """The daemon under test: its URL, its keys and table, and a way to wait on it."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.table = f"{prefix}_nodes"
        self.redis = redis.Redis.from_url(REDIS_URL)

    def node_key(self, node: int) -> str:
        return f"{self.prefix}:node:{node}:traffic"

    def traffic(self, nodes: list[int]) -> dict[int, int]:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            rows = conn.execute(f"SELECT id, traffic_used FROM {self.table} WHERE id = ANY(%s)",
                                (nodes,)).fetchall()
        return dict(rows)

    def status(self, plugin: str) -> dict[str, Any]:
        return httpx.get(f"{self.url}/plugins/{plugin}", timeout=10).json()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module", name="daemon")
def _daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Syncd]:
    prefix = unique_prefix("ui")
    tmp = tmp_path_factory.mktemp("browser")
    site = tmp / "site"
    dist = site / "syncd_mailbox-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: syncd-mailbox\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[syncd]\nmailbox = mailbox_plugin\n")
    table = f"{prefix}_nodes"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, "
                     "traffic_used BIGINT NOT NULL DEFAULT 0)")
        conn.execute(f"INSERT INTO {table} (id) SELECT generate_series(1, {NODES})")
    port = _free_port()
    config = {
        "redis": {"url": REDIS_URL},
        "databases": {"default": PG_URL},
        "http": {"listen": f"127.0.0.1:{port}", "token": TOKEN},
        "shutdown_grace": "5s",
        "instance": f"{prefix}-ui",
        "plugins": {
            "traffic": {"key_pattern": f"{prefix}:node:{{node_id}}:traffic", "table": table,
                        "dead_letter": f"{prefix}:traffic:dead", "interval": "1h",
                        "inflight_prefix": f"{prefix}:inflight:traffic", "create_table": False},
            "votes": {"queue": f"{prefix}:votes", "table": f"{prefix}_votes",
                      "dead_letter": f"{prefix}:votes:dead"},
            "mailbox": {"queue": f"{prefix}:mail", "dead_letter": f"{prefix}:mail:dead"},
        },
    }
    path = tmp / "syncd.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SYNCD_") or k.startswith("SYNCD_TEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(TESTS), env.get("PYTHONPATH", "")])
    log = (tmp / "syncd.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "syncd", "serve", "--config", str(path)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_sync(lambda: httpx.get(f"{url}/health/ready", timeout=5).status_code == 200,
              ignore=(httpx.HTTPError,))
        yield Syncd(url, prefix)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"DROP TABLE IF EXISTS {prefix}_votes")
        delete_keys(prefix)
    assert proc.returncode == 0, (tmp / "syncd.log").read_text()[-3000:]


@pytest.fixture(name="page")
def _page(browser: Browser, daemon: Syncd) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(daemon.url + "/")
    yield page
    context.close()
    # A CSP violation ("Refused to ...") or a script error shows up here; answers
    # such as a 404 for a plugin without a panel are logged too, and expected.
    assert [e for e in errors if not e.startswith("Failed to load resource")] == []


def card(page: Page, plugin: str) -> Any:
    return page.locator(f'section.card[data-plugin="{plugin}"]')


def enter_token(page: Page) -> None:
    page.fill("#token", TOKEN)
    page.dispatch_event("#token", "change")


class TestPluginsView:
    """Every plugin is shown with its state, rate, sparkline and panel."""

    def test_plugins_are_shown_with_their_panel(self, page: Page) -> None:
        for name in ("traffic", "votes", "mailbox"):
            expect(card(page, name).locator('[data-field="state"]')).to_have_text(
                "running", timeout=WAIT_MS)
            expect(card(page, name).locator("svg.spark")).to_have_count(1)
        panel = card(page, "mailbox").locator(".panel")
        expect(panel.locator("h3")).to_have_text("Mailbox", timeout=WAIT_MS)
        # The plugin's markup is text, never HTML.
        expect(panel.locator("p.muted")).to_have_text("<b>not bold</b>")
        assert panel.locator("b").count() == 0

    @pytest.mark.parametrize(("width", "height"), [(1280, 800), (390, 844)],
                             ids=["desktop", "phone"])
    def test_readable_without_sideways_scrolling(self, page: Page, width: int,
                                                 height: int) -> None:
        page.set_viewport_size({"width": width, "height": height})
        expect(card(page, "votes")).to_be_visible(timeout=WAIT_MS)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
        box = card(page, "votes").bounding_box()
        assert box is not None and box["width"] <= width


class TestControl:
    """Pause and resume through the buttons; without the token, a clear 401."""

    def test_a_401_asks_for_the_token_then_pause_and_resume_work(
        self, page: Page, daemon: Syncd,
    ) -> None:
        votes = card(page, "votes")
        votes.locator('button[data-action="pause"]').click()
        expect(page.locator("#status")).to_contain_text("401", timeout=WAIT_MS)
        expect(page.locator("#status")).to_contain_text("token")
        expect(page.locator("#token-box")).to_have_class("needed")
        assert daemon.status("votes")["paused"] is False

        enter_token(page)
        assert page.evaluate("sessionStorage.getItem('syncd-token')") == TOKEN
        clicked = time.monotonic()
        votes.locator('button[data-action="pause"]').click()
        expect(votes.locator('[data-field="state"]')).to_have_text("paused", timeout=WAIT_MS)
        shown_after = time.monotonic() - clicked
        assert daemon.status("votes")["paused"] is True
        votes.locator('button[data-action="resume"]').click()
        expect(votes.locator('[data-field="state"]')).to_have_text("running", timeout=WAIT_MS)
        assert daemon.status("votes")["paused"] is False
        print(f"pause shown {shown_after:.3f}s after the click")

        # Kept for the tab: a reload does not ask again.
        page.reload()
        expect(page.locator("#token")).to_have_value(TOKEN)


class TestDeadLetters:
    """Browse a quarantine, see payloads as text, requeue, see the rows in SQL."""

    def test_requeue_from_the_page_and_the_rows_arrive(self, page: Page, daemon: Syncd) -> None:
        late = {NODES + 1 + i: 100 * (i + 1) for i in range(5)}
        with daemon.redis.pipeline() as pipe:
            for node, amount in late.items():
                pipe.hincrby(daemon.node_key(node), "upload", amount)
                pipe.hincrby(daemon.node_key(node), "download", 1)
            pipe.execute()
        enter_token(page)
        traffic = card(page, "traffic")
        traffic.locator('button[data-action="flush"]').click()
        expect(page.locator("#status")).to_contain_text("flush traffic: done", timeout=WAIT_MS)
        # A flush that quarantines refreshes the count; the page shows it on its next poll.
        link = traffic.locator('a[href="#dead-letters/traffic"]')
        expect(link).to_contain_text("5 waiting", timeout=30_000)
        link.click()

        expect(page.locator("#dead-summary")).to_contain_text("5 waiting", timeout=WAIT_MS)
        reasons = page.locator("#reasons tbody tr")
        expect(reasons).to_have_count(1)
        expect(reasons.first).to_contain_text("no row with id = N in")
        expect(reasons.first.locator("td").first).to_have_text("5")
        items = page.locator("#dead-items tbody tr")
        expect(items).to_have_count(5)
        expect(items.first.locator("pre.payload")).to_contain_text(daemon.node_key(NODES + 5))
        expect(items.first).to_contain_text("back by HINCRBY")

        # The operator adds the missing rows, then requeues everything.
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"INSERT INTO {daemon.table} (id) SELECT unnest(%s::bigint[])",
                         (list(late),))
        page.click('button[data-action="requeue-all"]')
        expect(page.locator("#confirm")).to_be_visible()
        expect(page.locator("#confirm-question")).to_contain_text("Requeue all 5")
        page.click("#confirm-ok")
        expect(page.locator("#status")).to_contain_text("(5 requeued", timeout=WAIT_MS)
        expect(page.locator("#dead-summary")).to_contain_text("0 waiting", timeout=WAIT_MS)

        page.click('a[href="#"]')
        card(page, "traffic").locator('button[data-action="flush"]').click()
        expect(page.locator("#status")).to_contain_text("(5 items)", timeout=WAIT_MS)
        wait_for_sync(lambda: daemon.traffic(list(late)) == {n: a + 1 for n, a in late.items()},
              ignore=(httpx.HTTPError,))
        assert daemon.redis.llen(f"{daemon.prefix}:traffic:dead") == 0

    def test_payloads_are_text_and_purge_asks_first(self, page: Page, daemon: Syncd) -> None:
        hostile = b'bad<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
        daemon.redis.lpush(f"{daemon.prefix}:mail", hostile)
        dead = f"{daemon.prefix}:mail:dead"
        wait_for_sync(lambda: daemon.redis.llen(dead) == 1, ignore=(httpx.HTTPError,))
        page.goto(daemon.url + "/#dead-letters/mailbox")
        enter_token(page)
        payload = page.locator("#dead-items pre.payload")
        expect(payload).to_have_text(hostile.decode(), timeout=WAIT_MS)
        assert page.locator("#dead-items img, #dead-items script").count() == 0
        assert page.evaluate("window.pwned") is None
        page.set_viewport_size({"width": 390, "height": 844})
        assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
        page.set_viewport_size({"width": 1280, "height": 800})

        page.locator("#dead-items tbody input[type=checkbox]").first.check()
        expect(page.locator("#selected-count")).to_have_text("1 selected")
        page.click('button[data-action="purge-selected"]')
        expect(page.locator("#confirm-detail")).to_contain_text("deleted for good")
        page.click("#confirm-cancel")
        assert daemon.redis.llen(dead) == 1
        page.click('button[data-action="purge-selected"]')
        page.click("#confirm-ok")
        expect(page.locator("#status")).to_contain_text("(1 purged", timeout=WAIT_MS)
        assert daemon.redis.llen(dead) == 0
        assert json.loads(daemon.redis.get(f"{daemon.prefix}:mail:delivered") or b"0") == 0
