"""Derived Redis keys share their source's Cluster slot."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from syncd import hash_tag, slot_key


class TestSlotKey:
    """A derived key hashes where its base does, tagged or not."""

    @pytest.mark.parametrize("base", ["votes", "whatsapp:in", "node:7:traffic", "{app}:votes"])
    def test_same_slot(self, base: str) -> None:
        derived = slot_key(base, "processing", "web-1")
        assert key_slot(derived.encode()) == key_slot(base.encode())

    def test_untagged_base_is_wrapped_and_tagged_base_kept(self) -> None:
        assert slot_key("votes", "dead") == "{votes}:dead"
        assert slot_key("{app}:votes", "dead") == "{app}:votes:dead"

    @pytest.mark.parametrize("base", ["{}votes", "a}b", "x{y"])
    def test_braces_that_are_no_tag_are_refused(self, base: str) -> None:
        with pytest.raises(ValueError, match="hash tag"):
            slot_key(base, "dead")

    def test_hash_tag(self) -> None:
        assert hash_tag("{a}:b") == "a"
        assert hash_tag("a{}b{c}") is None
        assert hash_tag("plain") is None
