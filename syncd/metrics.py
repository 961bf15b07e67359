"""Prometheus metrics: one registry per daemon, never the global one.

A registry per daemon keeps tests (and several daemons in one process) from
tripping over "Duplicated timeseries". The core's per-plugin series carry a
``plugin`` label; plugins add their own series through `PluginMetrics`,
which hands back the existing collector when asked twice for the same name
(a restarted worker calls its factory again).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase

#: Plugin states, exported as a one-hot ``syncd_plugin_state`` gauge.
STATES = ("starting", "running", "standby", "paused", "failed", "stopping", "stopped")

BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@attrs.define(slots=False)  # the series are set in __attrs_post_init__
class Metrics:
    """The daemon's registry and the core's own series."""

    registry: CollectorRegistry = attrs.Factory(lambda: CollectorRegistry(auto_describe=True))
    _owned: dict[str, MetricWrapperBase] = attrs.Factory(dict)

    def __attrs_post_init__(self) -> None:
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.items_synced = Counter(
            "syncd_items_synced", "Items written to their sink.", ["plugin"], registry=r)
        self.batches = Counter(
            "syncd_batches", "Batches committed.", ["plugin"], registry=r)
        self.batch_duration = Histogram(
            "syncd_batch_duration_seconds", "Time to take, apply and acknowledge a batch.",
            ["plugin"], buckets=BATCH_BUCKETS, registry=r)
        self.dead_lettered = Counter(
            "syncd_dead_lettered", "Items quarantined in a dead-letter store.", ["plugin"],
            registry=r)
        self.skipped = Counter(
            "syncd_replays_skipped", "Items found already applied when replaying a batch.",
            ["plugin"], registry=r)
        self.errors = Counter(
            "syncd_errors", "Errors by plugin and kind.", ["plugin", "kind"], registry=r)
        self.restarts = Counter(
            "syncd_plugin_restarts", "Times a plugin's worker was restarted.", ["plugin"],
            registry=r)
        self.state = Gauge(
            "syncd_plugin_state", "1 for the plugin's current state.", ["plugin", "state"],
            registry=r)
        self.paused = Gauge("syncd_plugin_paused", "1 while paused.", ["plugin"], registry=r)
        self.last_success = Gauge(
            "syncd_last_success_timestamp_seconds", "When the last batch committed.",
            ["plugin"], registry=r)
        self.backlog = Gauge(
            "syncd_backlog", "Items waiting in Redis.", ["plugin"], registry=r)
        self.oldest_pending_age = Gauge(
            "syncd_oldest_pending_age_seconds", "Age of the oldest waiting item, if known.",
            ["plugin"], registry=r)
        self.dead_letters = Gauge(
            "syncd_dead_letters", "Dead letters waiting in the plugin's lists.", ["plugin"],
            registry=r)
        self.dead_letter_oldest_age = Gauge(
            "syncd_dead_letter_oldest_age_seconds",
            "Age of the oldest dead letter waiting (0 when there is none).", ["plugin"],
            registry=r)
        # Exclusive plugins (syncd.lease).
        self.lease_changes = Counter(
            "syncd_lease_changes",
            "Times this replica took (acquired), lost (lost) or handed back (released) "
            "a plugin's lease.", ["plugin", "change"], registry=r)
        self.lease_held = Gauge(
            "syncd_lease_held", "1 while this replica holds the plugin's lease.", ["plugin"],
            registry=r)
        self.fenced_commits = Counter(
            "syncd_fenced_commits",
            "Commits the database refused because the plugin's lease had passed to "
            "another replica.", ["plugin"], registry=r)
        # Names promised by the votes seed.
        self.redis_errors = Counter(
            "redis_errors", "Redis connection errors.", registry=r)
        self.database_errors = Counter(
            "database_errors", "Database connection errors.", ["database"], registry=r)
        self.health_checks = Counter(
            "health_checks", "/health and /health/ready answers, by status.", ["status"],
            registry=r)

    def set_state(self, plugin: str, state: str) -> None:
        for name in STATES:
            self.state.labels(plugin, name).set(1 if name == state else 0)

    def for_plugin(self, plugin: str) -> PluginMetrics:
        return PluginMetrics(self, plugin)

    def get_or_create(
        self, kind: type[MetricWrapperBase], name: str, documentation: str,
        labelnames: Sequence[str] = (), **kwargs: Any,
    ) -> Any:
        """Create a collector once; later calls with the same name return it."""
        existing = self._owned.get(name)
        if existing is not None:
            if not isinstance(existing, kind):
                raise ValueError(f"metric {name} already exists as a {type(existing).__name__}")
            return existing
        metric = kind(name, documentation, labelnames, registry=self.registry, **kwargs)
        self._owned[name] = metric
        return metric

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@attrs.frozen
class PluginMetrics:
    """A plugin's door to the registry: create its own series by name.

    Names are the plugin's to choose (the votes plugin keeps the seed's
    ``votes_processed_total``); the core's per-plugin series are updated for
    it from the `SyncResult` values it reports.
    """

    metrics: Metrics
    plugin: str

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        return self.metrics.get_or_create(Counter, name, documentation, labelnames)

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self.metrics.get_or_create(Gauge, name, documentation, labelnames)

    def histogram(
        self, name: str, documentation: str, labelnames: Sequence[str] = (),
        buckets: Sequence[float] = BATCH_BUCKETS,
    ) -> Histogram:
        return self.metrics.get_or_create(
            Histogram, name, documentation, labelnames, buckets=buckets)

    def error(self, kind: str) -> None:
        """Count an error of this plugin by kind (``redis``, ``database``, ``invalid``…)."""
        self.metrics.errors.labels(self.plugin, kind).inc()

    def backlog(self, items: int, oldest_age: float | None = None) -> None:
        self.metrics.backlog.labels(self.plugin).set(items)
        if oldest_age is not None:
            self.metrics.oldest_pending_age.labels(self.plugin).set(oldest_age)
