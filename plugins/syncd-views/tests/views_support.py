"""Helpers shared by the views plugin's tests (a uniquely named module)."""

from __future__ import annotations

from typing import Any

import syncd_views
from syncd_views.workload import ViewsWorkload

from syncd.testing import daemon_config

#: VOD rows per test table: enough for several batches, quick to create.
VODS = 2_000
PLUGINS = [syncd_views]


def config_for(workload: ViewsWorkload, db_url: str, **options: Any) -> dict[str, Any]:
    """A daemon config running only the views plugin on ``db_url``."""
    section = {**workload.options, "interval": "1h", **options}
    return daemon_config({"views": section}, {"default": db_url})
