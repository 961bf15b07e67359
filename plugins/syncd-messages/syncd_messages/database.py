"""The ``database`` writer: one row per message, exactly once through the ledger.

A batch's rows and its ledger entry commit in one transaction
(`syncd.Database.apply_batch`), written with `syncd.Transaction.insert`:
COPY straight into the table on PostgreSQL, multi-row INSERTs on MySQL and
MariaDB. A replay of a batch that committed before a crash finds its ledger
entry and writes nothing. The batch is first tried whole; if the database
refuses it (a message JSONB cannot hold, such as ``\\u0000``), it is tried
again isolating the rows it refuses, which are dead-lettered with the
database's reason while the rest commits. The ledger detail keeps those
positions and reasons, so a replay dead-letters exactly the same ones.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import attrs

import syncd
from syncd_messages.schema import COLUMNS, create_statement
from syncd_messages.written import Written


class Unparsed(Exception):
    """The database refused a batch whose objects were not parsed first
    (`normalize_batch` ``unparsed``): normalize it again, parsing, and write that."""


@attrs.define(eq=False)
class DatabaseWriter:
    """Writes batches of messages to ``table``, each batch under its ledger entry."""

    ctx: syncd.PluginContext
    name: str = "database"
    #: The table's ``message`` is PostgreSQL's JSONB or JSON, which refuse
    #: what is no JSON: messages may then come unparsed (see `Unparsed`).
    parses_json: bool = False

    @property
    def database(self) -> syncd.Database:
        assert self.ctx.database is not None  # the spec declares uses_database
        return self.ctx.database

    async def prepare(self) -> None:
        """Create the table if the catalog says it is missing (once per process),
        and learn whether its ``message`` column parses JSON (`parses_json`)."""
        table = self.ctx.config.table
        if self.ctx.config.create_table:

            def create(tx: syncd.Transaction) -> None:
                if not tx.table_exists(table):
                    tx.execute(create_statement(tx.dialect, table))

            await self.database.setup_once(f"messages:{table}", create)
        if self.database.dialect == "postgresql":

            def parses(tx: syncd.Transaction) -> bool:
                return tx.table_exists(table) and tx.column_type(table, "message") in (
                    "jsonb", "json")

            self.parses_json = await self.database.transaction(parses)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        yield

    async def write(
        self, queue_type: str, source: str, batch: syncd.Batch, messages: list[bytes],
        *, unparsed: bool = False,
    ) -> Written:
        synced_at: Any = datetime.now(UTC)
        dialect = self.database.dialect
        if dialect != "postgresql":
            # pymysql and sqlite3 take text fastest (and MySQL's DATETIME has no zone).
            synced_at = synced_at.strftime("%Y-%m-%d %H:%M:%S.%f")
        batch_id = batch.id
        rows = [(queue_type, message.decode(), batch_id, position, synced_at)
                for position, message in enumerate(messages)]
        # One datetime shared by every row: `syncd.Transaction.insert` formats
        # it once for PostgreSQL's COPY.
        suspects = (
            {i for i, message in enumerate(messages) if _jsonb_suspect(message)}
            if dialect == "postgresql" and b"\\u" in b"".join(messages) else set()
        )
        plugin = self.ctx.name
        try:
            applied, refused = await self.database.apply_batch(
                plugin, batch.id, lambda tx: self._insert(tx, rows, suspects))
        except syncd.TransientError:
            raise
        except Exception as exc:
            if unparsed:
                raise Unparsed(str(exc)) from exc
            self.ctx.log.info("database refused the batch; isolating the rows it refuses",
                              extra={"batch": batch.id, "error": str(exc)[:200]})
            applied, refused = await self.database.apply_batch(
                plugin, batch.id, lambda tx: self._insert(tx, rows, None))
        if not applied:
            entry = await self.database.ledger_entry(plugin, batch.id)
            refused = _decode_detail(entry.detail if entry else None)
            return Written(0, len(messages) - len(refused), refused)
        assert refused is not None
        return Written(len(messages) - len(refused), 0, refused)

    def _insert(
        self, tx: syncd.Transaction, rows: list[tuple[Any, ...]], suspects: set[int] | None
    ) -> list[tuple[int, str]]:
        """In the database thread: the rows; returns ``(position, reason)`` refused.

        ``suspects``: rows the database may refuse, each inserted on its own
        under a savepoint, between plain inserts of the runs of rows around
        them (so ids still follow the queue's order); None: every row
        isolated (the first attempt was refused where nobody expected it).
        """
        table = self.ctx.config.table
        rejected: list[tuple[int, str]] = []
        if suspects is None:
            rejected = tx.insert(table, COLUMNS, rows, isolate=True).rejected
        else:
            start = 0
            for index in sorted(suspects):
                tx.insert(table, COLUMNS, rows[start:index])
                answer = tx.insert(table, COLUMNS, rows[index:index + 1], isolate=True)
                rejected += [(index, message) for _, message in answer.rejected]
                start = index + 1
            tx.insert(table, COLUMNS, rows[start:])
        refused = [(index, f"database refused the message: {message}")
                   for index, message in rejected]
        if refused:
            tx.ledger_detail = json.dumps({"refused": refused}, ensure_ascii=False)
        return refused


#: What JSONB refuses although it is JSON: the escape of NUL, and surrogate
#: escapes (paired ones are fine, but telling them apart is the database's job).
_JSONB_SUSPECT = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def _jsonb_suspect(message: bytes) -> bool:
    """Whether PostgreSQL might refuse ``message``: a cheap look, no verdict.

    A false alarm costs a savepoint; a miss costs the batch's first attempt.
    """
    return b"\\u" in message and _JSONB_SUSPECT.search(message) is not None


def _decode_detail(detail: str | None) -> list[tuple[int, str]]:
    """The refused positions of a batch that committed before a crash."""
    if not detail:
        return []
    return [(int(position), str(reason)) for position, reason in json.loads(detail)["refused"]]
