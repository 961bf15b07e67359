"""The messages plugin's own Prometheus series: per queue and per writer."""

from __future__ import annotations

from typing import Any

import attrs

import syncd


@attrs.frozen
class MessageMetrics:
    """Get-or-create the series in the daemon's registry (safe across restarts).

    Attributes:
        queue_length: Items waiting in a queue's list, not yet taken.
        waiting: Messages waiting for a writer: its list plus the batch in flight.
        oldest_age: Seconds since syncd took the oldest message a writer still
            has to write (0 when it has none).
        delivered: Messages a writer wrote (``messages_delivered_total``).
        dead_lettered: Items dead-lettered, by writer (``intake`` for items
            that were no message at all).
        writer_up: 1 while a writer's last attempt succeeded, 0 while it retries.
        duration: Seconds per batch, by writer (``intake`` included).
    """

    queue_length: Any
    waiting: Any
    oldest_age: Any
    delivered: Any
    dead_lettered: Any
    writer_up: Any
    duration: Any

    @classmethod
    def create(cls, metrics: syncd.PluginMetrics) -> MessageMetrics:
        return cls(
            queue_length=metrics.gauge(
                "messages_queue_length", "Items waiting in a queue's Redis list.", ["queue"]),
            waiting=metrics.gauge(
                "messages_waiting",
                "Messages waiting in Redis for a writer (its list and its batch in flight).",
                ["queue", "writer"]),
            oldest_age=metrics.gauge(
                "messages_oldest_age_seconds",
                "Age of the oldest message a writer has yet to write (0 if none).",
                ["queue", "writer"]),
            delivered=metrics.counter(
                "messages_delivered", "Messages written, by queue and writer.",
                ["queue", "writer"]),
            dead_lettered=metrics.counter(
                "messages_dead_lettered",
                "Items dead-lettered, by queue and writer (intake: not a message).",
                ["queue", "writer"]),
            writer_up=metrics.gauge(
                "messages_writer_up", "1 while a writer delivers, 0 while it retries.",
                ["queue", "writer"]),
            duration=metrics.histogram(
                "messages_batch_duration_seconds", "Time per batch, by writer.", ["writer"]),
        )
