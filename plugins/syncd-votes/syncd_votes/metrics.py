"""The votes plugin's own Prometheus series (the seed's names, plus queue gauges)."""

from __future__ import annotations

import weakref
from collections import Counter as Tally
from collections.abc import Iterable
from typing import Any

import attrs

import syncd

#: Label value for votes beyond ``max_vote_labels`` distinct choices.
OTHER = "_other"

# Vote labels already in use, per counter: a restarted worker gets the same
# counter back from the registry, and must not start counting from zero.
_labels: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


@attrs.frozen
class VoteMetrics:
    """Get-or-create the series in the daemon's registry (safe across restarts).

    Attributes:
        processed: ``votes_processed_total{vote}`` (prometheus_client adds ``_total``).
        duration: ``vote_process_duration_seconds``, one observation per batch.
        queue_length: Votes waiting in the queue.
        processing_length: Votes in this instance's processing lists (all lanes).
        dead_letters: Entries in the dead-letter list.
        max_labels: Distinct ``vote`` label values before `OTHER` is used.
    """

    processed: Any
    duration: Any
    queue_length: Any
    processing_length: Any
    dead_letters: Any
    max_labels: int

    @classmethod
    def create(cls, metrics: syncd.PluginMetrics, max_labels: int) -> VoteMetrics:
        return cls(
            processed=metrics.counter(
                "votes_processed", "Votes stored in SQL, by choice.", ["vote"]),
            duration=metrics.histogram(
                "vote_process_duration_seconds",
                "Time to validate, store and acknowledge one batch of votes."),
            queue_length=metrics.gauge(
                "votes_queue_length", "Votes waiting in the Redis queue."),
            processing_length=metrics.gauge(
                "votes_processing_length", "Votes in this instance's processing lists."),
            dead_letters=metrics.gauge(
                "votes_dead_letters", "Entries in the votes dead-letter list."),
            max_labels=max_labels,
        )

    def count(self, votes: Iterable[str]) -> None:
        """Add stored votes to ``votes_processed_total``, one ``inc`` per choice."""
        seen = _labels.setdefault(self.processed, set())
        for vote, n in Tally(votes).items():
            label = vote
            if vote not in seen:
                if len(seen) >= self.max_labels:
                    label = OTHER
                else:
                    seen.add(vote)
            self.processed.labels(label).inc(n)

    def lengths(self, queued: int, in_flight: int, dead: int) -> None:
        self.queue_length.set(queued)
        self.processing_length.set(in_flight)
        self.dead_letters.set(dead)
