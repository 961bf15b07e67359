"""Where portfolio cannot run (Redis Cluster without a hash-tagged BullMQ
prefix, a database other than PostgreSQL), said in one line at start, not a
traceback later."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from syncd_portfolio.config import PortfolioConfig, cluster_refusal


def test_a_cluster_needs_a_hash_tagged_prefix() -> None:
    option, reason = cluster_refusal(PortfolioConfig())  # type: ignore[misc]
    assert option == "prefix" and "need a hash tag" in reason and "'{bull}'" in reason
    assert cluster_refusal(PortfolioConfig(prefix="{bull}")) is None
    assert cluster_refusal(PortfolioConfig(queue="{portfolio-sync}")) is None


def test_a_tagged_prefix_keeps_dead_letters_in_the_jobs_slot() -> None:
    tagged = PortfolioConfig(prefix="{bull}")
    assert tagged.dead_letter_key == "{bull}:portfolio-sync:dead"
    assert PortfolioConfig().dead_letter_key == "{portfolio-sync}:dead"
    assert PortfolioConfig(queue="{jobs}").dead_letter_key == "bull:{jobs}:dead"


@pytest.mark.parametrize(("settings", "line"), [
    ({"redis": {"url": "redis+cluster://127.0.0.1:1"},
      "databases": {"default": "postgresql://postgres@127.0.0.1/test"}},
     "plugins.portfolio.prefix: on Redis Cluster BullMQ's keys need a hash tag"),
    ({"databases": {"default": "sqlite:///x.sqlite3"}},
     "plugins.portfolio.database: the portfolio plugin needs PostgreSQL, not SQLite"),
])
def test_serve_says_it_and_exits_2(tmp_path: Path, settings: dict, line: str) -> None:
    config = tmp_path / "syncd.yaml"
    config.write_text(yaml.safe_dump({**settings, "plugins": {"portfolio": {}}}))
    done = subprocess.run([sys.executable, "-m", "syncd", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert done.returncode == 2, done.stderr
    assert line in done.stderr
    assert "Traceback" not in done.stderr
