"""The few ERC-20 calls the EVM provider makes, encoded and decoded by hand.

Four functions with fixed shapes (``balanceOf(address)``, ``decimals()``,
``symbol()``, ``name()``) do not justify eth-abi and its dependency tree;
the encodings are the ABI spec's, and the tests check them against a
contract compiled by solc and running on a real EVM node.
"""

from __future__ import annotations

BALANCE_OF = "0x70a08231"
DECIMALS = "0x313ce567"
SYMBOL = "0x95d89b41"
NAME = "0x06fdde03"


class AbiError(ValueError):
    """The contract answered something that is not the expected ABI value."""


def balance_of(owner: str) -> str:
    """Call data of ``balanceOf(owner)``: the selector and the address in 32 bytes."""
    return BALANCE_OF + owner.lower().removeprefix("0x").rjust(64, "0")


def _bytes(result: str) -> bytes:
    if not isinstance(result, str) or not result.startswith("0x"):
        raise AbiError(f"not a hex result: {result!r}")
    try:
        return bytes.fromhex(result[2:])
    except ValueError:
        raise AbiError(f"not a hex result: {result[:80]!r}") from None


def decode_uint(result: str) -> int:
    data = _bytes(result)
    if len(data) < 32:
        raise AbiError(f"expected a 32-byte integer, got {len(data)} bytes")
    return int.from_bytes(data[:32], "big")


def decode_string(result: str) -> str:
    """A ``string`` return value; also the ``bytes32`` some old tokens (MKR) return."""
    data = _bytes(result)
    if len(data) == 32:  # bytes32, NUL-padded
        return data.rstrip(b"\0").decode("utf-8", "replace")
    if len(data) < 64:
        raise AbiError(f"expected an ABI string, got {len(data)} bytes")
    offset = int.from_bytes(data[:32], "big")
    if offset + 32 > len(data):
        raise AbiError("ABI string offset out of range")
    length = int.from_bytes(data[offset:offset + 32], "big")
    if offset + 32 + length > len(data):
        raise AbiError("ABI string length out of range")
    return data[offset + 32:offset + 32 + length].decode("utf-8", "replace")
