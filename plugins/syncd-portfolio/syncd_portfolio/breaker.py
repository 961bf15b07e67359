"""A circuit breaker per provider endpoint.

Closed: calls go through; ``failures`` consecutive failures open it. Open:
calls fail at once with `CircuitOpen` (the job is retried later with its
backoff) until ``cooldown`` has passed. Half-open: one trial call goes
through; its success closes the circuit, its failure opens it again for
another cool-down. The maintained breaker libraries are asyncio- or
thread-bound (aiobreaker, pybreaker); this one is a few lines on Trio's
clock, and tests drive it with Trio's mock clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import attrs
import trio

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)


class CircuitOpen(Exception):
    """The endpoint failed too often lately; not called (retry later)."""


@attrs.define(eq=False)
class CircuitBreaker:
    """One endpoint's breaker.

    Attributes:
        name: The endpoint, for messages, ``/workers`` and metrics.
        failures: Consecutive failures that open the circuit.
        cooldown: Seconds it stays open before a trial call.
        on_change: Called with ``(name, state)`` on every state change.
    """

    name: str
    failures: int = 5
    cooldown: float = 30.0
    on_change: Callable[[str, str], None] | None = None
    state: str = CLOSED
    consecutive: int = 0
    opened_at: float | None = None
    _trial: bool = False

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if self.on_change is not None:
                self.on_change(self.name, state)

    def allow(self) -> None:
        """Raise `CircuitOpen` unless a call may go through now."""
        if self.state == OPEN:
            assert self.opened_at is not None
            remaining = self.opened_at + self.cooldown - trio.current_time()
            if remaining > 0:
                raise CircuitOpen(
                    f"circuit open for {self.name} after {self.consecutive} consecutive "
                    f"failures; next trial in {remaining:.1f}s")
            self._set(HALF_OPEN)
        if self.state == HALF_OPEN:
            if self._trial:
                raise CircuitOpen(f"circuit half-open for {self.name}; a trial call is running")
            self._trial = True

    def success(self) -> None:
        self._trial = False
        self.consecutive = 0
        self.opened_at = None
        self._set(CLOSED)

    def failure(self) -> None:
        self._trial = False
        self.consecutive += 1
        if self.state == HALF_OPEN or self.consecutive >= self.failures:
            self.opened_at = trio.current_time()
            self._set(OPEN)

    @asynccontextmanager
    async def guard(
        self, *, answered: tuple[type[Exception], ...] = ()
    ) -> AsyncIterator[None]:
        """Around one call: refuse it when open; count how it ended.

        A cancelled call (job timeout, cancel, shutdown) says nothing about
        the endpoint... unless it hung: a timeout is counted as a failure by
        the caller, which knows why it was cancelled. Errors in ``answered``
        mean the endpoint answered and the input was wrong (a "token" with
        no contract): a success for the endpoint. Counted as failures, a
        burst of bad jobs opened the circuit for every good one (chaos).
        """
        self.allow()
        try:
            yield
        except trio.Cancelled:
            self._trial = False
            raise
        except answered:
            self.success()
            raise
        except Exception:
            self.failure()
            raise
        else:
            self.success()

    def status(self) -> dict[str, object]:
        return {"endpoint": self.name, "state": self.state,
                "consecutive_failures": self.consecutive}
