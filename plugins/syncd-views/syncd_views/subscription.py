"""One pub/sub subscription, read in bulk: redis-py connects, hiredis parses.

redis-py's ``PubSub.get_message`` costs about 15 µs a message here (a poll
of the socket and a dict per message); at the 50,000 updates a second
issue 13 asks one daemon to absorb, that alone would be most of a core.
So redis-py's `Connection` does what it does well — the URL, TLS, AUTH,
SELECT, CLIENT SETNAME — and once SUBSCRIBE is sent the connection is only
read: one ``recv`` of whatever the socket holds, fed to a `hiredis.Reader`
(in C), a few hundred nanoseconds a message (measured: 7 µs a message with
JSON parsing, against 15 µs without). RESP2 is asked for, so a message is
the plain array ``[b"message", channel, payload]``.

Blocking and not thread-safe: one worker thread at a time uses it.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import hiredis
import redis

#: Bytes per recv: a read takes what the socket holds, up to this.
RECV_BYTES = 1 << 20


class Subscription:
    """SUBSCRIBE ``channel`` on a connection of its own; `read` the messages in bulk."""

    def __init__(self, url: str, channel: str, client_name: str, timeout: float = 5.0) -> None:
        self.channel = channel.encode()
        pool = redis.ConnectionPool.from_url(
            url, client_name=client_name, protocol=2, socket_timeout=timeout,
            socket_connect_timeout=min(timeout, 2.0))
        self._conn = pool.make_connection()
        self._reader = hiredis.Reader()
        self._pending: list[Any] = []
        try:
            self._conn.connect()
            # The one private attribute used: redis-py's own socket, once it
            # is connected and authenticated, is read here and nowhere else.
            self._sock: socket.socket = self._conn._sock
            self._conn.send_command("SUBSCRIBE", self.channel)
            self._wait_for(b"subscribe", timeout)
        except BaseException:
            self._conn.disconnect()
            raise

    def read(self, timeout: float, limit: int) -> list[bytes]:
        """The payloads the socket holds now (waiting up to ``timeout`` for
        some), at most about ``limit``. Raises ConnectionError when it closed."""
        payloads: list[bytes] = []
        for kind, _, payload in self._take(timeout, limit):
            if kind == b"message":
                payloads.append(payload)
        return payloads

    def unsubscribe(self, timeout: float) -> list[bytes]:
        """UNSUBSCRIBE, and the payloads that arrived before Redis confirmed it."""
        self._conn.send_command("UNSUBSCRIBE", self.channel)
        payloads: list[bytes] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for kind, _, payload in self._take(min(0.2, timeout), 100_000):
                if kind == b"message":
                    payloads.append(payload)
                elif kind == b"unsubscribe":
                    return payloads
        raise redis.TimeoutError(f"no confirmation of UNSUBSCRIBE {self.channel!r}")

    def close(self) -> None:
        self._conn.disconnect()

    def _take(self, timeout: float, limit: int) -> list[Any]:
        """Parsed replies: what is buffered, else one recv's worth."""
        replies, self._pending = self._pending, []
        gets = self._reader.gets
        reply = gets()
        if reply is False and not replies:
            self._sock.settimeout(timeout)
            try:
                data = self._sock.recv(RECV_BYTES)
            except TimeoutError:  # socket.timeout: nothing arrived
                return []
            if not data:
                raise redis.ConnectionError("the subscription's connection was closed")
            self._reader.feed(data)
            reply = gets()
        while reply is not False:
            if isinstance(reply, redis.ResponseError | hiredis.ReplyError):
                raise redis.ResponseError(str(reply))
            replies.append(reply)
            if len(replies) >= limit:
                break
            reply = gets()
        return replies

    def _wait_for(self, kind: bytes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            replies = self._take(min(0.2, timeout), 1)
            if replies and replies[0][0] == kind:
                return
        raise redis.TimeoutError(f"no confirmation of {kind.decode().upper()} {self.channel!r}")
