"""The portfolio plugin's Prometheus series: counters and histograms, not only gauges."""

from __future__ import annotations

import attrs
from prometheus_client import Counter, Gauge, Histogram

import syncd
from syncd_portfolio.breaker import STATES

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
QUEUE_STATES = ("waiting", "prioritized", "delayed", "active", "completed", "failed", "paused",
                "waiting-children")


@attrs.frozen
class JobMetrics:
    jobs: Counter
    duration: Histogram
    attempts: Counter
    retries: Counter
    timeouts: Counter
    cancellations: Counter
    active: Gauge
    queue: Gauge
    circuit: Gauge
    circuit_opened: Counter
    # Label children by label values: ``labels()`` costs a lock and a tuple
    # check each time, three times a job (prometheus keeps every child anyway).
    _children: dict[tuple[str, ...], tuple[Counter, Histogram]] = attrs.Factory(dict)
    _attempt_children: dict[str, Counter] = attrs.Factory(dict)

    @classmethod
    def create(cls, m: syncd.PluginMetrics) -> JobMetrics:
        return cls(
            jobs=m.counter("portfolio_jobs", "Job attempts ended, by queue, name and outcome "
                           "(completed, retried, failed, cancelled, requeued).",
                           ["queue", "name", "outcome"]),
            duration=m.histogram("portfolio_job_duration_seconds",
                                 "Time one job attempt ran, by name and outcome.",
                                 ["name", "outcome"], buckets=DURATION_BUCKETS),
            attempts=m.counter("portfolio_job_attempts", "Job attempts started.", ["name"]),
            retries=m.counter("portfolio_job_retries",
                              "Attempts that failed and will be retried with backoff.", ["name"]),
            timeouts=m.counter("portfolio_job_timeouts",
                               "Attempts cancelled because they ran past the timeout.", ["name"]),
            cancellations=m.counter("portfolio_job_cancellations",
                                    "Active jobs cancelled through DELETE /jobs/:id.", ["name"]),
            active=m.gauge("portfolio_active_jobs", "Jobs running on this replica now."),
            queue=m.gauge("portfolio_queue_jobs", "Jobs in the BullMQ queue by state.",
                          ["queue", "state"]),
            circuit=m.gauge("portfolio_circuit_state",
                            "1 for each provider endpoint's breaker state.",
                            ["endpoint", "state"]),
            circuit_opened=m.counter("portfolio_circuit_opened",
                                     "Times an endpoint's breaker opened.", ["endpoint"]),
        )

    def attempt_started(self, name: str) -> None:
        child = self._attempt_children.get(name)
        if child is None:
            child = self._attempt_children[name] = self.attempts.labels(name)
        child.inc()

    def attempt_ended(self, queue: str, name: str, outcome: str, seconds: float) -> None:
        key = (queue, name, outcome)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.jobs.labels(queue, name, outcome),
                                              self.duration.labels(name, outcome))
        children[0].inc()
        children[1].observe(seconds)

    def circuit_state(self, endpoint: str, state: str) -> None:
        for name in STATES:
            self.circuit.labels(endpoint, name).set(1 if name == state else 0)
        if state == "open":
            self.circuit_opened.labels(endpoint).inc()
