"""A webhook receiver for tests, benchmarks and chaos runs: real HTTP, told how to fail.

It answers the messages plugin's POSTs on 127.0.0.1 and records each one
(id, whether the Standard Webhooks signature verified, the messages). It
can be told, per request in order or as the default, to answer ``ok``
(200), any status (``500``, ``400``), ``429:<seconds>`` (with
``Retry-After``), to ``hang`` past the client's timeout, or to ``close``
the connection without an answer.

In a test it runs in the test's own nursery (`Receiver.serve`); for
``syncd bench`` and ``syncd chaos`` it runs as a process of its own
(``python -m syncd_messages.receiver --port P --log FILE``), so it never
competes with the daemon for the GIL, appending one JSON line per accepted
request to the log and taking orders at ``POST /_control``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import h11
import trio
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

MAX_BODY = 64 << 20


@attrs.frozen
class Received:
    """One request as the receiver saw it.

    Attributes:
        id: ``webhook-id``.
        idempotency_key: ``Idempotency-Key``.
        signed: Whether the signature verified (None without a secret).
        answer: What the receiver did (``ok``, ``500``, ``hang``...).
        body: The parsed JSON body (None if it was not JSON).
    """

    id: str | None
    idempotency_key: str | None
    signed: bool | None
    answer: str
    body: Any

    @property
    def messages(self) -> list[Any]:
        return list(self.body.get("messages", [])) if isinstance(self.body, dict) else []


@attrs.define(eq=False)
class Receiver:
    """The receiver; ``plan`` is consumed one answer per request, then ``default``."""

    secret: str | None = None
    log: Path | None = None
    port: int = 0
    plan: list[str] = attrs.Factory(list)
    default: str = "ok"
    requests: list[Received] = attrs.Factory(list)
    hanging: int = 0
    _log_file: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def delivered(self) -> list[Received]:
        return [r for r in self.requests if r.answer == "ok"]

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                    ready: Callable[[int], None] | None = None) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        if ready is not None:
            ready(self.port)
        if self.log is not None:
            self._log_file = self.log.open("ab")
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                await trio.serve_listeners(self._connection, listeners, handler_nursery=nursery)
        finally:
            if self._log_file is not None:
                self._log_file.close()

    def _answer(self) -> str:
        return self.plan.pop(0) if self.plan else self.default

    async def _connection(self, stream: trio.SocketStream) -> None:
        # A client killed mid-request (the chaos runs SIGKILL the daemon) must
        # cost its connection only, never the receiver.
        with contextlib.suppress(h11.ProtocolError, trio.BrokenResourceError,
                                 trio.ClosedResourceError, OSError):
            await self._exchange(stream)

    async def _exchange(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_BODY)
        async with stream:
            while True:
                request = await _read_request(conn, stream)
                if request is None:
                    return
                method, target, headers, body = request
                if target == "/_control" and method == "POST":
                    self._control(json.loads(body or b"{}"))
                    await _respond(conn, stream, 200, b'{"ok":true}')
                elif target == "/_stats":
                    stats = {"requests": len(self.requests), "delivered": len(self.delivered())}
                    await _respond(conn, stream, 200, json.dumps(stats).encode())
                else:
                    answer = self._answer()
                    self._record(headers, body, answer)
                    if answer == "close":
                        return
                    if answer == "hang":
                        self.hanging += 1
                        # Until the client gives up and closes its end.
                        with trio.move_on_after(300):
                            while await stream.receive_some(65536):
                                pass
                        return
                    status, _, after = answer.partition(":")
                    code = 200 if status == "ok" else int(status)
                    extra = [("retry-after", after)] if after else []
                    await _respond(conn, stream, code,
                                   b'{"ok":true}' if code < 300 else b"nope: " + status.encode(),
                                   extra)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return

    def _control(self, order: dict[str, Any]) -> None:
        if "plan" in order:
            self.plan = list(order["plan"])
        if "default" in order:
            self.default = str(order["default"])

    def _record(self, headers: dict[str, str], body: bytes, answer: str) -> None:
        signed = None
        if self.secret:
            try:
                Webhook(self.secret).verify(body, headers)
                signed = True
            except WebhookVerificationError:
                signed = False
        webhook_id = headers.get("webhook-id")
        if self._log_file is not None:
            # A process of its own, for a benchmark or a chaos run: the body
            # as it came, read by `logged_deliveries` afterwards, not parsed
            # here before answering (on the daemon's cores) nor kept in
            # memory for the whole run.
            self.requests.append(Received(webhook_id, headers.get("idempotency-key"), signed,
                                          answer, None))
            if answer == "ok":
                self._log_file.write(b"%s\t%s\n" % (
                    (webhook_id or "").encode(), body.replace(b"\n", b" ")))
                self._log_file.flush()
            return
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        self.requests.append(Received(webhook_id, headers.get("idempotency-key"), signed,
                                      answer, doc))


def logged_deliveries(log: Path) -> Iterator[tuple[str, list[Any]]]:
    """``(webhook id, messages)`` of each request a receiver process answered 2xx."""
    with log.open("rb") as lines:
        for line in lines:
            webhook_id, _, body = line.rstrip(b"\n").partition(b"\t")
            doc = json.loads(body)
            yield webhook_id.decode(), doc.get("messages", []) if isinstance(doc, dict) else []


def token(message: Any) -> str:
    """What identifies a message in the logs: its ``id``, else its text."""
    if isinstance(message, dict):
        return str(message.get("id", message.get("text", "")))
    return str(message)


async def _read_request(
    conn: h11.Connection, stream: trio.SocketStream
) -> tuple[str, str, dict[str, str], bytes] | None:
    method = target = ""
    headers: dict[str, str] = {}
    chunks: list[bytes] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            try:
                conn.receive_data(data)
            except h11.RemoteProtocolError:
                return None
            continue
        if isinstance(event, h11.Request):
            method, target = event.method.decode(), event.target.decode()
            headers = {k.decode().lower(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return method, target, headers, b"".join(chunks)
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None
        else:
            return None


async def _respond(conn: h11.Connection, stream: trio.SocketStream, status: int, body: bytes,
                   extra: Sequence[tuple[str, str]] = ()) -> None:
    headers = [("content-type", "application/json"), ("content-length", str(len(body))),
               *extra]
    try:
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
        await stream.send_all(conn.send(h11.Data(data=body)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def main(argv: list[str] | None = None, *, run: Callable[..., Any] = trio.run) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path)
    parser.add_argument("--secret", default=os.environ.get("SYNCD_RECEIVER_SECRET"))
    args = parser.parse_args(argv)
    receiver = Receiver(secret=args.secret, log=args.log, port=args.port)

    def ready(port: int) -> None:
        # The parent waits for this line: a port someone else holds makes
        # the bind fail (and this process exit) instead of a silent stranger.
        print(f"listening on {port}", flush=True)

    run(functools.partial(receiver.serve, ready=ready))


if __name__ == "__main__":
    main()
