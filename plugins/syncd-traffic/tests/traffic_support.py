"""Helpers shared by the traffic plugin's tests (a uniquely named module)."""

from __future__ import annotations

from typing import Any

import syncd_traffic
from syncd_traffic.workload import TrafficWorkload

from syncd.testing import daemon_config

#: Node rows per test table: enough for several batches, quick to create.
NODES = 2_000
PLUGINS = [syncd_traffic]

def config_for(workload: TrafficWorkload, db_url: str, **options: Any) -> dict[str, Any]:
    """A daemon config running only the traffic plugin on ``db_url``."""
    section = {**workload.options, "interval": "1h", **options}
    return daemon_config({"traffic": section}, {"default": db_url})

