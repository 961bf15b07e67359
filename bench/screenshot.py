"""The status page under load, photographed by the browser the tests drive.

Run: ``.venv/bin/python bench/screenshot.py [--seconds 150] [--out bench/results]``

Starts ``syncd serve`` (traffic and votes into PostgreSQL, with a token) and
a producer thread that writes votes and node counters at a rate that rises
and falls over a minute, so the sparklines have a shape; a few votes are
malformed and a few counters name nodes without a row, so there are dead
letters to show. Then Debian's Chromium, through Playwright as in
``tests/test_dashboard_browser.py``, opens the page while the load runs and
saves ``dashboard.png`` (1280x800), ``dashboard-phone.png`` (390 wide) and
``dashboard-dead-letters.png`` under ``--out``. Everything it created
(tables, keys) is removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psycopg
import redis
import yaml
from playwright.sync_api import sync_playwright

from syncd.testing import PG_URL, REDIS_URL, delete_keys, unique_prefix

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TOKEN = "screenshot"
NODES = 5_000
TICK = 0.1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def produce(prefix: str, rate: float, stop: threading.Event) -> None:
    """Votes and counters at ``rate`` items/s on average, swinging over a minute."""
    client = redis.Redis.from_url(REDIS_URL)
    started = time.monotonic()
    n = 0
    while not stop.is_set():
        t = time.monotonic() - started
        now_rate = rate * (1 + 0.7 * math.sin(2 * math.pi * t / 60))
        count = max(1, int(now_rate * TICK))
        with client.pipeline(transaction=False) as pipe:
            for _ in range(count):
                n += 1
                if n % 2:
                    vote = {"vote": random.choice("abc"), "voter_id": f"v{n}",
                            "timestamp": int(time.time())}
                    raw = json.dumps(vote) if n % 997 else '{"vote": "a", "voter_id": '
                    pipe.lpush(f"{prefix}:votes", raw)
                else:
                    node = random.randint(1, NODES) if n % 1201 else NODES + n % 50 + 1
                    key = f"{prefix}:node:{node}:traffic"
                    pipe.hincrby(key, "upload", random.randint(100, 5000))
                    pipe.hincrby(key, "download", random.randint(100, 50000))
            pipe.execute()
        time.sleep(TICK)
    client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=150.0,
                        help="load before the pictures (the sparkline fills 5 s a point)")
    parser.add_argument("--rate", type=float, default=1500.0, help="items per second")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    prefix = unique_prefix("shot")
    table = f"{prefix}_nodes"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, "
                     "traffic_used BIGINT NOT NULL DEFAULT 0)")
        conn.execute(f"INSERT INTO {table} (id) SELECT generate_series(1, {NODES})")
    config = {
        "redis": {"url": REDIS_URL},
        "databases": {"default": PG_URL},
        "http": {"listen": f"127.0.0.1:{port}", "token": TOKEN},
        "instance": f"{prefix}-shot",
        "plugins": {
            "traffic": {"key_pattern": f"{prefix}:node:{{node_id}}:traffic", "table": table,
                        "dead_letter": f"{prefix}:traffic:dead", "interval": "5s",
                        "inflight_prefix": f"{prefix}:inflight:traffic",
                        "create_table": False},
            "votes": {"queue": f"{prefix}:votes", "table": f"{prefix}_votes",
                      "dead_letter": f"{prefix}:votes:dead"},
        },
    }
    work = Path(tempfile.mkdtemp(prefix="syncd-shot-"))
    (work / "syncd.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    log = (work / "syncd.log").open("wb")
    daemon = subprocess.Popen([sys.executable, "-m", "syncd", "serve", "-c",
                               str(work / "syncd.yaml")], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    stop = threading.Event()
    producer = threading.Thread(target=produce, args=(prefix, args.rate, stop), daemon=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("syncd did not become ready; see " + str(work / "syncd.log"))
            time.sleep(0.2)
        producer.start()
        print(f"load for {args.seconds:.0f} s at ~{args.rate:.0f} items/s ...", flush=True)
        time.sleep(args.seconds)
        # syncd.testing imports trio-asyncio, whose loop policy would hand
        # Playwright a trio-asyncio loop: ask for asyncio's own.
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url + "/")
            page.fill("#token", TOKEN)
            page.dispatch_event("#token", "change")
            page.wait_for_selector('section.card[data-plugin="votes"] svg.spark polyline')
            page.wait_for_timeout(2500)  # two polls: the "now" rates settle
            page.screenshot(path=str(args.out / "dashboard.png"))
            page.set_viewport_size({"width": 390, "height": 844})
            page.wait_for_timeout(500)
            page.screenshot(path=str(args.out / "dashboard-phone.png"), full_page=True)
            page.set_viewport_size({"width": 1280, "height": 800})
            page.goto(url + "/#dead-letters/traffic")
            page.wait_for_selector("#dead-items tbody tr")
            page.screenshot(path=str(args.out / "dashboard-dead-letters.png"))
            browser.close()
        status = httpx.get(f"{url}/plugins", timeout=5).json()
        for plugin in status:
            print(f"{plugin['name']}: {plugin['throughput']['now']} items/s now, "
                  f"{plugin['items_synced']} synced, dead letters {plugin['dead_letters']}")
    finally:
        stop.set()
        if producer.is_alive():
            producer.join(5)
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"DROP TABLE IF EXISTS {prefix}_votes")
        delete_keys(prefix)
    print("wrote", *(str(args.out / n) for n in
                     ("dashboard.png", "dashboard-phone.png", "dashboard-dead-letters.png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
