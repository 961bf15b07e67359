"""The ``webhook`` writer: one signed POST per batch, retried under the same id.

The body is the seed's, ``{"queueType", "messages", "timestamp", "count"}``,
with the messages as the exact bytes the other writers got. Every attempt
at a batch carries the same id, ``msg_<batch id>``, as ``Idempotency-Key``
and as the Standard Webhooks ``webhook-id``, with ``webhook-timestamp`` and,
when a secret is configured, ``webhook-signature`` (HMAC-SHA256 over
``id.timestamp.body``, computed by the ``standardwebhooks`` library). The
batch id is the writer's `syncd.ReliableQueue` batch id, stable across
retries, restarts and reclaims: a receiver that remembers ids sees each
batch once.

- 2xx: delivered.
- 408, 429, 5xx, a timeout or a connection error: `WebhookUnavailable`, a
  transient error; the worker retries with capped exponential backoff and
  jitter, honouring ``Retry-After``.
- any other answer: permanent for this batch. Its messages are
  dead-lettered for the webhook writer only, with the status and the start
  of the response body as the reason; the queue goes on.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import attrs
import httpx
import orjson
import trio
from standardwebhooks.webhooks import Webhook

import syncd
from syncd_messages.config import RETRY_AFTER_MAX
from syncd_messages.written import Written

#: How much of a refusing receiver's answer goes into the dead letter's reason.
BODY_IN_REASON = 200

USER_AGENT = f"syncd-messages/{syncd.__version__}"


class WebhookUnavailable(syncd.TransientError):
    """The receiver did not take the batch this time; try again later.

    Attributes:
        retry_after: Seconds the receiver asked us to wait (``Retry-After``), if it did.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def body(queue_type: str, messages: list[bytes], when: datetime) -> bytes:
    """The seed's body, assembled around the messages' own bytes (never re-encoded)."""
    stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return b"".join((
        b'{"queueType":', orjson.dumps(queue_type),
        b',"messages":[', b",".join(messages),
        b'],"timestamp":', orjson.dumps(stamp),
        b',"count":', str(len(messages)).encode(), b"}",
    ))


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


@attrs.define(eq=False)
class WebhookWriter:
    """POSTs each batch to ``webhook_url``."""

    ctx: syncd.PluginContext
    name: str = "webhook"
    client: httpx.AsyncClient | None = None
    signer: Webhook | None = None
    _users: int = 0

    async def prepare(self) -> None:
        cfg = self.ctx.config
        if cfg.webhook_secret and self.signer is None:
            self.signer = Webhook(str(cfg.webhook_secret))

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        """Keep one HTTP client (and its kept-alive connections) open while any
        user needs it: the intake loop for its lifetime, a flush for its own
        (the final flush runs after the loop has stopped)."""
        if self.client is None:
            # Its own timeouts bound each phase; the deadline in `write` bounds the whole.
            self.client = httpx.AsyncClient(
                timeout=httpx.Timeout(float(self.ctx.config.webhook_timeout)),
                follow_redirects=False,
                headers={"user-agent": USER_AGENT, "content-type": "application/json"},
            )
        self._users += 1
        try:
            yield
        finally:
            self._users -= 1
            if self._users == 0 and self.client is not None:
                client, self.client = self.client, None
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await client.aclose()

    async def write(
        self, queue_type: str, source: str, batch: syncd.Batch, messages: list[bytes]
    ) -> Written:
        assert self.client is not None, "within session() only"
        cfg = self.ctx.config
        msg_id = f"msg_{batch.id}"
        now = datetime.now(UTC)
        content = body(queue_type, messages, now)
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "idempotency-key": msg_id,
        }
        if self.signer is not None:
            headers["webhook-signature"] = self.signer.sign(msg_id, now, content.decode())
        timeout = float(cfg.webhook_timeout)
        response = None
        with trio.move_on_after(timeout):
            try:
                response = await self.client.post(cfg.webhook_url, content=content,
                                                  headers=headers)
            except httpx.TimeoutException as exc:
                raise WebhookUnavailable(f"webhook timed out: {type(exc).__name__}") from exc
            except httpx.TransportError as exc:
                raise WebhookUnavailable(
                    f"webhook unreachable: {type(exc).__name__}: {exc}") from exc
        if response is None:
            raise WebhookUnavailable(f"webhook gave no answer within {timeout:g} s")
        status = response.status_code
        if 200 <= status < 300:
            return Written(len(messages))
        if status in (408, 429) or status >= 500:
            raise WebhookUnavailable(
                f"webhook answered {status}",
                retry_after=retry_after(response.headers.get("retry-after")))
        start = response.text[:BODY_IN_REASON]
        reason = f"webhook answered {status}: {start}" if start else f"webhook answered {status}"
        self.ctx.log.warning("webhook refused a batch; its messages are dead-lettered "
                             "for the webhook writer", extra={
                                 "batch": batch.id, "status": status, "messages": len(messages)})
        return Written(0, 0, [(position, reason) for position in range(len(messages))])
