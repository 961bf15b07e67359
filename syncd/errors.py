"""The exceptions syncd raises on purpose.

They are few so that callers can tell the three situations that matter apart:
the operator wrote something wrong (ConfigError, fail fast, exit 2), a
backend is away for a while (TransientError, back off and retry, nothing is
lost), or a single item is bad (RejectedItem, quarantine it and go on).
`Fenced` is a transient error with a meaning of its own: this replica lost
its lease, so the plugin stands by here while another replica runs it.
"""

from __future__ import annotations


class SyncdError(Exception):
    """Base class for every error syncd raises deliberately."""


class ConfigError(SyncdError):
    """The configuration is wrong; the message names the key and the problem."""

    def __init__(self, key: str, problem: str) -> None:
        # One line, always: it is printed as the only line of a failed start.
        problem = " ".join(line.strip() for line in str(problem).strip().splitlines())
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


class TransientError(SyncdError):
    """A backend is unreachable right now; retrying later is the right answer."""


class RedisUnavailable(TransientError):
    """Redis did not answer (connection refused, reset or timed out)."""


class DatabaseUnavailable(TransientError):
    """A SQL database did not answer (connection refused, lost or timed out)."""


class Fenced(TransientError):
    """A commit was refused: the plugin's lease has passed to another replica.

    Raised from the transaction that carried a stale fencing token, after it
    rolled back: nothing of it was applied. A `TransientError`, so that code
    which already treats those as "leave the item in Redis, do not
    quarantine it" does the right thing; the supervisor recognises it and
    puts the plugin on standby instead of restarting it.
    """


class RejectedItem(SyncdError):
    """One item cannot be synced as it is; it belongs in the dead-letter store."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
