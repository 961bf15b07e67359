"""The Redis keys the plugin derives from a queue's list, all in its Cluster slot.

For a queue ``whatsapp:in`` (the application's list):

``{whatsapp:in}:writer:<writer>``
    The writer's own list: every message taken from the queue is forwarded
    here, atomically with removing it from the queue's batch
    (`syncd.ReliableQueue.ack` with ``forward_to``), and the writer consumes
    it as a `syncd.ReliableQueue` of its own, at its own pace.
``{whatsapp:in}:dead``
    Dead letters of that queue: items no writer could take (empty, too big,
    not UTF-8), and messages one writer refused (``source`` names that
    writer's list, so a requeue gives it to that writer only).
``{whatsapp:in}:writer:file:marker``
    A hash, per consumer: the batch the file writer is appending, the file
    and the offset it starts at, set before the append, so a restart can
    tell whether that batch reached the file.
"""

from __future__ import annotations

import syncd


def lane_key(source: str, writer: str) -> str:
    return syncd.slot_key(source, "writer", writer)


def dead_key(source: str) -> str:
    return syncd.slot_key(source, "dead")


def marker_key(source: str) -> str:
    return syncd.slot_key(source, "writer", "file", "marker")
