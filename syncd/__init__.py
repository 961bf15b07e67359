"""syncd: move data from Redis into SQL without losing or double-counting it.

This module is the public facade: plugin packages import from ``syncd`` only,
never from its submodules, so the core can rearrange itself behind it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from syncd.config import Duration, Secret
from syncd.counterflush import (
    CounterFlusher,
    CounterJudge,
    CounterLetter,
    CounterMetrics,
    CounterSpec,
    JudgedCounters,
    counter_letter,
)
from syncd.counters import CounterSnapshots, Snapshot
from syncd.deadletter import DeadLetter, forget_dead_letters_pushed, push_dead_letters
from syncd.errors import (
    ConfigError,
    DatabaseUnavailable,
    Fenced,
    RedisUnavailable,
    RejectedItem,
    SyncdError,
    TransientError,
)
from syncd.faults import crash_point
from syncd.gate import PauseGate
from syncd.hookspecs import hookimpl, hookspec
from syncd.keys import derived_key, hash_tag, slot_key
from syncd.lease import Fence
from syncd.metrics import PluginMetrics
from syncd.panel import Action, Panel, Table
from syncd.plugin import PluginContext, PluginSpec, Route, SyncResult, Worker
from syncd.queue import Batch, ReliableQueue
from syncd.redis import RedisHandle, is_cluster, one_node_url, scan_masters
from syncd.restore import NotRequeueable, Restore
from syncd.sql import Database, Transaction
from syncd.supervisor import error_kind
from syncd.workload import Tally, Workload, WorkloadEnv, stop_process

try:
    __version__ = version("syncd")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0"

__all__ = [
    "Action",
    "Batch",
    "ConfigError",
    "CounterFlusher",
    "CounterJudge",
    "CounterLetter",
    "CounterMetrics",
    "CounterSnapshots",
    "CounterSpec",
    "Database",
    "DatabaseUnavailable",
    "DeadLetter",
    "Duration",
    "Fence",
    "Fenced",
    "JudgedCounters",
    "NotRequeueable",
    "Panel",
    "PauseGate",
    "PluginContext",
    "PluginMetrics",
    "PluginSpec",
    "RedisHandle",
    "RedisUnavailable",
    "RejectedItem",
    "ReliableQueue",
    "Restore",
    "Route",
    "Secret",
    "Snapshot",
    "SyncResult",
    "SyncdError",
    "Table",
    "Tally",
    "Transaction",
    "TransientError",
    "Worker",
    "Workload",
    "WorkloadEnv",
    "__version__",
    "counter_letter",
    "crash_point",
    "derived_key",
    "error_kind",
    "forget_dead_letters_pushed",
    "hash_tag",
    "hookimpl",
    "hookspec",
    "is_cluster",
    "one_node_url",
    "push_dead_letters",
    "scan_masters",
    "slot_key",
    "stop_process",
]
