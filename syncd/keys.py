"""Naming Redis keys so that every key one script touches shares a Cluster slot.

Redis Cluster runs a Lua script only if all its keys hash to one slot, and
hashes only the *hash tag* of a key when it has one: the text between the
first ``{`` and the next ``}``, if that is not empty. A key without a tag
hashes whole, so ``votes`` and ``{votes}:processing:web-1`` share a slot.
Every key syncd derives from a key of the user's (a queue's processing list,
a counter's in-flight area, a dead-letter list) is built with `slot_key`, so
it lives in its source's slot on a cluster and costs nothing on one node.
"""

from __future__ import annotations

__all__ = ["derived_key", "hash_tag", "slot_key"]


def hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes if it is a tag, else None."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


def slot_key(base: str, *parts: str) -> str:
    """A key derived from ``base`` that hashes to the same Cluster slot.

    ``slot_key("votes", "processing", "web-1")`` is
    ``{votes}:processing:web-1``; a base that already carries a tag keeps it:
    ``slot_key("{app}:votes", "dead")`` is ``{app}:votes:dead``.

    Raises:
        ValueError: for a base with braces that do not form a hash tag
            (``{}x``, ``a}b``): wrapped in braces, it would hash elsewhere.
    """
    if hash_tag(base) is not None:
        head = base
    elif "{" in base or "}" in base:
        raise ValueError(
            f"Redis key {base!r} has braces that are not a hash tag; "
            "use a name without braces or with a tag such as '{app}:votes'")
    else:
        head = f"{{{base}}}"
    return ":".join((head, *parts))


def derived_key(base: str, *parts: str, cluster: bool) -> str:
    """``base:part:...`` on one Redis node, `slot_key` on a Cluster.

    For names that existed before Cluster support (a queue's processing
    lists, its registry): single-node deployments keep the names their Redis
    already holds (a batch in flight across an upgrade is found again),
    while on a Cluster they are tagged into their base's slot.
    """
    return slot_key(base, *parts) if cluster else ":".join((base, *parts))


def key_slot(key: bytes | str) -> int:
    """The Cluster hash slot of ``key`` (its hash tag's, if it has one)."""
    from redis.crc import key_slot as crc_slot

    return crc_slot(key.encode() if isinstance(key, str) else key)
