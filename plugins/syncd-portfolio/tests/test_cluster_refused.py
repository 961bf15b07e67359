"""BullMQ on Redis Cluster is a known limit: said in one line, not a traceback later."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from syncd_portfolio.worker import PortfolioWorker

from syncd.errors import ConfigError


def test_refused_with_one_line() -> None:
    ctx = SimpleNamespace(redis=SimpleNamespace(cluster=True), config=None)
    with pytest.raises(ConfigError, match="does not run on Redis Cluster"):
        PortfolioWorker(ctx)  # type: ignore[arg-type]
