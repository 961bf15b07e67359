"""SQL sinks: one small interface, one module per dialect.

This is the package's public face; ``base`` holds what all dialects share
(the pool, the single thread hop per batch, the exactly-once ledger, row
isolation) and ``postgres`` / ``mysql`` / ``sqlite`` only what differs.

Typical use from a plugin (``fn`` runs in a worker thread, in one transaction)::

    db = open_database("default", "postgresql://postgres@127.0.0.1/app")
    await db.connect()

    def write(tx: Transaction) -> InsertResult:
        return tx.insert_ignore("votes", ["voter_id", "vote"], rows, isolate=True)

    applied, result = await db.apply_batch("votes", batch_id, write)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from syncd.sql.base import (
    Database,
    Dialect,
    IncrementResult,
    InsertResult,
    LedgerEntry,
    Transaction,
    validate_identifier,
)

__all__ = [
    "Database",
    "Dialect",
    "IncrementResult",
    "InsertResult",
    "LedgerEntry",
    "Transaction",
    "dialect_of",
    "open_database",
    "validate_identifier",
]

#: URL scheme -> (module, class). Imported on use: each pulls in its driver.
_SCHEMES = {
    "postgresql": ("syncd.sql.postgres", "PostgresDatabase"),
    "postgres": ("syncd.sql.postgres", "PostgresDatabase"),
    "mysql": ("syncd.sql.mysql", "MySQLDatabase"),
    "mariadb": ("syncd.sql.mysql", "MySQLDatabase"),
    "sqlite": ("syncd.sql.sqlite", "SQLiteDatabase"),
}


def dialect_of(url: str) -> str:
    """``"postgresql"``, ``"mysql"`` or ``"sqlite"`` for a database URL syncd accepts."""
    scheme = url.partition(":")[0].split("+", 1)[0].lower()
    if scheme not in _SCHEMES:
        raise ValueError(f"unsupported database URL scheme {scheme!r}")
    return {"postgres": "postgresql", "mariadb": "mysql"}.get(scheme, scheme)


def open_database(
    name: str,
    url: str,
    *,
    pool_size: int = 4,
    ledger_table: str = "syncd_ledger",
    lease_table: str = "syncd_leases",
    on_error: Callable[[BaseException], None] | None = None,
    connect_timeout: float = 5.0,
    lock_timeout: float = 5.0,
    idle_transaction_timeout: float = 60.0,
) -> Database:
    """Describe a database from its URL, without connecting (``await db.connect()`` does).

    Accepted: ``postgresql://`` (or ``postgres://``), ``mysql://`` (or
    ``mariadb://``, for MySQL and MariaDB) and ``sqlite:///relative.db``,
    ``sqlite:////absolute.db``, ``sqlite:///:memory:``. SQLite always uses
    a single connection, whatever ``pool_size`` says. Every session waits
    for a lock at most ``lock_timeout`` seconds, and is ended by the server
    when idle inside a transaction for ``idle_transaction_timeout`` (see
    `Database`).

    Raises:
        ValueError: for an unknown scheme or a malformed URL, with a message
            the configuration layer can show as it is.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in _SCHEMES:
        known = "postgresql://, postgres://, mysql://, mariadb://, sqlite:///"
        shown = f"{scheme}://" if scheme else "no scheme"
        raise ValueError(f"unsupported database URL ({shown}); use one of {known}")
    module, cls_name = _SCHEMES[scheme]
    cls: type[Database] = getattr(importlib.import_module(module), cls_name)
    return cls(
        name,
        url,
        pool_size=pool_size,
        ledger_table=ledger_table,
        lease_table=lease_table,
        on_error=on_error,
        connect_timeout=connect_timeout,
        lock_timeout=lock_timeout,
        idle_transaction_timeout=idle_transaction_timeout,
    )
