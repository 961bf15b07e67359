"""syncd-views: video view counters from Redis into SQL exactly once, live totals back.

The application INCRs ``vod:views:{vodId}`` (or publishes ``{"vodId",
"count"}`` on ``view_count_updates``, which this plugin INCRBYs on arrival);
every ``interval`` the counters are added to ``vods.views`` through the
ledger, and the new totals are published on ``view_count_totals`` after the
commit. See README.md.
"""

from __future__ import annotations

from typing import Any

import syncd
from syncd_views import judge
from syncd_views.config import ViewsConfig
from syncd_views.worker import ViewsWorker
from syncd_views.workload import ViewsWorkload

NAME = "views"


@syncd.hookimpl
def syncd_plugin() -> syncd.PluginSpec:
    return syncd.PluginSpec(
        name=NAME,
        config=ViewsConfig,
        create=ViewsWorker.create,
        description="VOD view counters (Redis strings, pub/sub) added to SQL exactly once; "
                    "live totals published.",
        # One replica at a time: they share the in-flight snapshots, and each
        # subscriber would INCRBY every pub/sub update once more.
        exclusive=True,
        lease_name=lease_name,
    )


def lease_name(config: ViewsConfig) -> str:
    """Replicas that share the in-flight snapshots share the lease."""
    return config.inflight_prefix


@syncd.hookimpl
def syncd_workload(plugin: str, prefix: str) -> syncd.Workload | None:
    if plugin != NAME:
        return None
    return ViewsWorkload(prefix).workload()


@syncd.hookimpl
def syncd_dead_letter_lists(plugin: str, config: Any) -> list[str] | None:
    return [config.dead_letter] if plugin == NAME else None


@syncd.hookimpl
def syncd_dead_letter_restore(
    plugin: str, config: Any, letter: syncd.DeadLetter,
) -> list[syncd.Restore] | None:
    """A VOD's views go back onto its counter (`judge.restore`)."""
    return judge.restore(letter) if plugin == NAME else None


__all__ = ["ViewsConfig", "ViewsWorker", "ViewsWorkload", "syncd_dead_letter_lists",
           "syncd_dead_letter_restore", "syncd_plugin", "syncd_workload"]
