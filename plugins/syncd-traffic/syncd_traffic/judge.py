"""Deciding what a snapshot's counters mean: SQL deltas or dead letters.

Pure logic, no I/O: the worker hands over the ``(key, fields)`` pairs a
snapshot took, raw as Redis gave them (`syncd.Snapshot.pairs`: the key as
bytes, the fields as a flat ``[field, value, ...]`` list), and gets back one
delta row per node plus the dead letters.

Judging is the plugin's hottest Python: every counter passes through it, and
at 100,000 counters a flush each microsecond is 0.1 s. So the common shape,
``upload`` and ``download`` as plain digits under a plain-digit id, is
recognised on the raw bytes without building a dict or decoding a string
(~0.6 µs a counter); anything else takes the general path below (~4 µs).

The rules (README "Bad data"):

- the node id in the key must be an integer (64-bit signed): otherwise the
  whole hash is quarantined;
- ``upload`` and ``download`` must be integers (as HINCRBY keeps them) and
  their sum must fit a BIGINT: otherwise the whole hash is quarantined, since
  the two are one observation and guessing which half is right is not ours;
- any other field is not ours to interpret, but the snapshot took it out of
  Redis with the rest, so it must not vanish: the known fields are applied
  and the unknown ones quarantined in an entry of their own;
- a node id with no row (``insert_missing`` off), or whose increment the
  database refuses, is only known inside the SQL transaction; the core's
  `syncd.CounterFlusher` builds those entries afterwards, from ``sources``.

`TrafficJudge` is what the flusher is given: these rules, the rows for the
configured columns, and what a node's delta counts in bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence

import attrs

import syncd
from syncd_traffic.config import NODE_ID, TrafficConfig

FIELDS = ("upload", "download")
_FIELD_SET = frozenset(FIELDS)
_UP, _DOWN = b"upload", b"download"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: A hash counter's fields: the flat ``[field, value, ...]`` list of a
#: snapshot, or (general path) a decoded field → value mapping.
Fields = list[bytes] | Mapping[str, bytes]
# Used with fullmatch: ``$`` would also match before a trailing newline,
# and int() then accepts b"5\n" as 5.
_INTEGER = re.compile(rb"-?[0-9]{1,19}")
_ID = re.compile(r"-?[0-9]{1,19}")

#: Reason labels for the ``traffic_dead_lettered_total`` metric (the core's
#: flusher adds ``missing_row`` and ``refused``).
BAD_ID, BAD_VALUE = "bad_id", "bad_value"
UNKNOWN_FIELD, MISSING_ROW = "unknown_field", "missing_row"

Letter = syncd.CounterLetter


@attrs.frozen
class TrafficJudge:
    """The traffic rules, as the core's `syncd.CounterFlusher` asks for them."""

    config: TrafficConfig
    plugin: str
    #: A node's delta is ``[upload, download]``: its bytes are their sum.
    units = staticmethod(sum)

    def judge(self, pairs: Iterable[tuple[bytes, list[bytes]]]) -> Judged:
        return judge(pairs, self.config, self.plugin)

    def rows(self, judged: syncd.JudgedCounters) -> list[tuple[int, ...]]:
        assert isinstance(judged, Judged)
        return judged.rows(self.config)


@attrs.define
class Judged(syncd.JudgedCounters):
    """A snapshot sorted into what goes to SQL and what goes to the dead-letter list.

    Attributes:
        deltas: node id → ``[upload, download]`` summed over the snapshot's
            keys for that node (two keys can name one node, e.g. ``7``/``07``,
            and one UPDATE per id must carry both).
        sources: node id → the ``(key, fields)`` pairs behind its delta (raw,
            or decoded for a counter that took the general path), to
            quarantine them verbatim if the row turns out to be missing.
        letters: The entries rejected before SQL.
    """

    def rows(self, config: TrafficConfig) -> list[tuple[int, ...]]:
        """``(id, delta per configured column)`` rows in id order (stable lock order)."""
        deltas = self.deltas
        if config.columns == (config.total_column,):  # the default: one column
            # Ids sorted as plain ints (sorting the (id, total) tuples took
            # 1.7x as long), the rest without a Python loop.
            ids = sorted(deltas)
            return list(zip(ids, map(sum, map(deltas.__getitem__, ids)), strict=True))
        pick = {config.total_column: lambda up, down: up + down,
                config.upload_column: lambda up, down: up,
                config.download_column: lambda up, down: down}
        columns = [pick[c] for c in config.columns]
        return [(nid, *(f(*deltas[nid]) for f in columns)) for nid in sorted(deltas)]

    @property
    def bytes(self) -> int:
        return sum(up + down for up, down in self.deltas.values())


def node_id(key: str, config: TrafficConfig) -> int | None:
    """The integer id in ``key``, or None if the key does not hold one."""
    head, tail = config.key_pattern.split(NODE_ID)
    if not (key.startswith(head) and key.endswith(tail)) or len(key) < len(head) + len(tail):
        return None
    return _id(key[len(head):len(key) - len(tail)])


def _id(text: str) -> int | None:
    if text.isdigit() and text.isascii() and len(text) <= 18:
        return int(text)
    if not _ID.fullmatch(text):
        return None
    value = int(text)
    return value if INT64_MIN <= value <= INT64_MAX else None


def _integer(raw: bytes) -> int | None:
    # Fast path: what HINCRBY leaves is canonical digits; 18 of them always
    # fit a BIGINT. Anything else takes the strict check.
    if raw.isdigit() and len(raw) <= 18:
        return int(raw)
    if not _INTEGER.fullmatch(raw):
        return None
    value = int(raw)
    return value if INT64_MIN <= value <= INT64_MAX else None


def judge(
    pairs: Iterable[tuple[bytes, list[bytes]]], config: TrafficConfig, plugin: str,
) -> Judged:
    """Sort a snapshot's counters (see the module docstring for the rules)."""
    judged = Judged()
    deltas, sources = judged.deltas, judged.sources
    head, tail = (part.encode() for part in config.key_pattern.split(NODE_ID))
    start, tail_len = len(head), len(tail)
    for key, flat in pairs:
        # The fast path: four plain-digit values (≤ 18 digits always fit a
        # BIGINT, and so does the sum of two) for a node not seen yet in
        # this snapshot. bytes.isdigit() is ASCII-only, unlike int().
        if len(flat) == 4 and key.startswith(head) and key.endswith(tail):
            digits = key[start:len(key) - tail_len]
            name0, value0, name1, value1 = flat
            if (digits.isdigit() and len(digits) <= 18 and value0.isdigit()
                    and value1.isdigit() and len(value0) <= 18 and len(value1) <= 18):
                nid = int(digits)
                if nid not in deltas:
                    if name0 == _UP and name1 == _DOWN:
                        deltas[nid] = [int(value0), int(value1)]
                        sources[nid] = [(key, flat)]
                        continue
                    if name0 == _DOWN and name1 == _UP:
                        deltas[nid] = [int(value1), int(value0)]
                        sources[nid] = [(key, flat)]
                        continue
        _judge_one(judged, key, flat, config, plugin)
    return judged


def _judge_one(
    judged: Judged, raw_key: bytes, flat: list[bytes], config: TrafficConfig, plugin: str,
) -> None:
    """The general path: one counter of any shape, with the reason when it is bad."""
    deltas, sources = judged.deltas, judged.sources
    key = _text(raw_key)
    fields = _decoded(flat)
    nid = node_id(key, config)
    if nid is None:
        judged.letters.append(_letter(BAD_ID, config, plugin, raw_key, fields,
                                      f"key {key!r} does not hold an integer node id"))
        return
    if len(fields) > 2 or not fields.keys() <= _FIELD_SET:
        known = {f: v for f, v in fields.items() if f in _FIELD_SET}
        unknown = {f: v for f, v in fields.items() if f not in _FIELD_SET}
        judged.letters.append(_letter(
            UNKNOWN_FIELD, config, plugin, raw_key, unknown,
            f"unknown field(s) {', '.join(sorted(unknown))}; only upload and download "
            "are counted (the known fields were applied)"))
        if not known:
            return
    else:
        known = fields
    raw_up, raw_down = known.get("upload", b"0"), known.get("download", b"0")
    up, down = _integer(raw_up), _integer(raw_down)
    if up is None or down is None:
        bad = [f for f, v in (("download", down), ("upload", up)) if v is None]
        judged.letters.append(_letter(
            BAD_VALUE, config, plugin, raw_key, fields,
            f"{' and '.join(bad)} not a 64-bit integer"))
        return
    delta = deltas.get(nid)
    if delta is not None:
        up, down = delta[0] + up, delta[1] + down
    if not (INT64_MIN <= up + down <= INT64_MAX and INT64_MIN <= up <= INT64_MAX
            and INT64_MIN <= down <= INT64_MAX):
        judged.letters.append(_letter(
            BAD_VALUE, config, plugin, raw_key, fields, "upload + download overflows BIGINT"))
        return
    deltas[nid] = [up, down]
    if delta is None:
        sources[nid] = [(raw_key, known)]
    else:
        sources[nid].append((raw_key, known))


def missing_letters(
    judged: Judged, missing: Sequence[int], config: TrafficConfig, plugin: str,
) -> list[Letter]:
    """Dead letters for node ids the SQL transaction found no row for."""
    letters = []
    for nid in missing:
        for key, fields in judged.sources.get(int(nid), ()):
            letters.append(_letter(
                MISSING_ROW, config, plugin, key, fields,
                f"no row with {config.id_column} = {nid} in {config.table} "
                "(insert_missing is off)"))
    return letters


def _decoded(fields: Fields) -> dict[str, bytes]:
    """Field names as text, values still raw."""
    if isinstance(fields, Mapping):
        return dict(fields)
    return {_text(name): value for name, value in zip(fields[0::2], fields[1::2], strict=True)}


def _letter(
    kind: str, config: TrafficConfig, plugin: str, key: bytes, fields: Fields, reason: str,
) -> Letter:
    return syncd.counter_letter(kind, config.dead_letter, plugin, key, fields, reason)


def restore(letter: syncd.DeadLetter) -> list[syncd.Restore]:
    """How a quarantined counter goes back: each value added onto its field again.

    The inverse of `_letter`: the payload names the hash and its fields, and
    each integer value is HINCRBY'd back onto the same key (where the
    application may have counted more meanwhile: adding is what a counter
    needs), so the next flush takes it. A value that is not an integer
    cannot be added to anything and refuses the whole entry, since the fields
    were one observation.
    """
    try:
        doc = json.loads(letter.payload_bytes)
        key, values = doc["key"], doc["values"]
        if not isinstance(key, str) or not isinstance(values, dict):
            raise TypeError("key must be text and values an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise syncd.NotRequeueable(f"not a traffic counter entry: {exc}") from None
    raw_key = key.encode("utf-8", "surrogateescape")
    ops = []
    for field, value in values.items():
        n = _integer(str(value).encode("utf-8", "surrogateescape"))
        if n is None:
            raise syncd.NotRequeueable(
                f"{field} = {value!r} is not a 64-bit integer, so it cannot be added back "
                "onto the counter")
        ops.append(syncd.Restore.hincrby(raw_key, field.encode("utf-8", "surrogateescape"), n))
    if not ops:
        raise syncd.NotRequeueable("the entry holds no values")
    return ops


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")
