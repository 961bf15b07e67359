"""Where portfolio cannot run (Redis Cluster, a database other than PostgreSQL),
said in one line at start, not a traceback later."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from syncd_portfolio.worker import PortfolioWorker

from syncd.errors import ConfigError


def test_refused_with_one_line() -> None:
    ctx = SimpleNamespace(redis=SimpleNamespace(cluster=True), config=None)
    with pytest.raises(ConfigError, match="does not run on Redis Cluster"):
        PortfolioWorker(ctx)  # type: ignore[arg-type]


@pytest.mark.parametrize(("settings", "line"), [
    ({"redis": {"url": "redis+cluster://127.0.0.1:1"},
      "databases": {"default": "postgresql://postgres@127.0.0.1/test"}},
     "redis.url: the portfolio plugin does not run on Redis Cluster"),
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
