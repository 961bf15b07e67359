"""syncd-traffic: node traffic counters from Redis hashes into SQL, exactly once.

The application keeps ``HINCRBY node:{node_id}:traffic upload|download N``;
every ``interval`` (and on manual flush and at shutdown) this plugin adds the
accumulated bytes to ``nodes.traffic_used`` and releases them from Redis only
after the SQL commit. See README.md for the config, guarantees and metrics.
"""

from __future__ import annotations

from typing import Any

import syncd
from syncd_traffic import judge
from syncd_traffic.config import TrafficConfig
from syncd_traffic.worker import TrafficWorker
from syncd_traffic.workload import TrafficWorkload

NAME = "traffic"


@syncd.hookimpl
def syncd_plugin() -> syncd.PluginSpec:
    return syncd.PluginSpec(
        name=NAME,
        config=TrafficConfig,
        create=TrafficWorker.create,
        description="Node traffic counters (Redis hashes) added to SQL, exactly once.",
        # Replicas share the in-flight snapshots: one flushes at a time, under
        # a lease named after them (see README, "Replicas").
        exclusive=True,
        lease_name=lease_name,
    )


def lease_name(config: TrafficConfig) -> str:
    """Replicas that share the in-flight snapshots share the lease."""
    return config.inflight_prefix


@syncd.hookimpl
def syncd_workload(plugin: str, prefix: str) -> syncd.Workload | None:
    if plugin != NAME:
        return None
    return TrafficWorkload(prefix).workload()


@syncd.hookimpl
def syncd_dead_letter_lists(plugin: str, config: Any) -> list[str] | None:
    return [config.dead_letter] if plugin == NAME else None


@syncd.hookimpl
def syncd_dead_letter_restore(
    plugin: str, config: Any, letter: syncd.DeadLetter,
) -> list[syncd.Restore] | None:
    """A node's values go back onto its counter hash (`judge.restore`)."""
    return judge.restore(letter) if plugin == NAME else None


__all__ = ["TrafficConfig", "TrafficWorker", "TrafficWorkload", "syncd_dead_letter_lists",
           "syncd_dead_letter_restore", "syncd_plugin", "syncd_workload"]
