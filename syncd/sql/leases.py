"""The leases of exclusive plugins, kept in the plugin's own SQL database.

One row per lease in ``syncd_leases`` (`Database.lease_table`)::

    name         the lease's name (PRIMARY KEY): what its replicas share
    plugin       the plugin that runs under it
    holder       the ``instance`` of the replica that took it last
    token        the fencing token: +1 at every acquisition, never reset
    acquired_at  when ``holder`` took it      } the database's clock, UTC,
    renewed_at   its last renewal             } so replicas whose clocks
    expires_at   when others may take it over } disagree still agree here
    asked_at     when a replica last asked for it in vain (the holder hands
                 it over on pause only if one is waiting)
    commits      transactions committed under the current token

Keeping it beside the data makes the fencing check one statement in the
batch's own transaction (`Transaction.check_fence`): the commit and the
check are atomic, which a lease in any other store could not give. Every
function here runs inside a transaction (``tx``), in a worker thread.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from syncd.sql.base import Transaction


@attrs.frozen
class LeaseRow:
    """A lease as the database holds it, read in one statement.

    Attributes:
        plugin: The plugin it is for.
        holder: The replica that took it last.
        token: Its fencing token.
        acquired_at: When ``holder`` took it (UTC, aware).
        expires_in: Seconds until it expires, by the database's clock
            (zero or less: expired, anyone may take it).
        commits: Transactions committed under ``token``.
        asked_ago: Seconds since another replica last asked for it in vain
            (None: none ever did).
    """

    plugin: str
    holder: str
    token: int
    acquired_at: datetime
    expires_in: float
    commits: int
    asked_ago: float | None = None


@attrs.frozen
class Acquired:
    """What an acquisition attempt found.

    Attributes:
        held: True if the caller holds the lease now.
        row: The lease after the attempt.
        previous: Who held it before the caller took it (None: nobody, or not taken).
    """

    held: bool
    row: LeaseRow
    previous: LeaseRow | None = None


def ensure_table(tx: Transaction) -> bool:
    """Create the lease table unless the catalog has it; True if it was created."""
    db = tx._db
    if tx.table_exists(db.lease_table):
        return False
    tx.execute(db._lease_ddl())
    return True


def read(tx: Transaction, name: str) -> LeaseRow | None:
    """The lease ``name``, or None if nobody ever took it."""
    db = tx._db
    rows = tx.fetchall(
        f"SELECT plugin, holder, token, acquired_at, expires_at, {db.now_sql}, commits, "
        f"asked_at FROM {db._lease_q} WHERE name = %s", (name,))
    if not rows:
        return None
    plugin, holder, token, acquired_at, expires_at, now, commits, asked_at = rows[0]
    now = db._timestamp_value(now)
    expires_in = (db._timestamp_value(expires_at) - now).total_seconds()
    asked_ago = None
    if asked_at is not None:
        asked_ago = (now - db._timestamp_value(asked_at)).total_seconds()
    return LeaseRow(str(plugin), str(holder), int(token), db._timestamp_value(acquired_at),
                    expires_in, int(commits), asked_ago)


def acquire(tx: Transaction, name: str, plugin: str, holder: str, ttl: float) -> Acquired:
    """Take the lease if it is free, expired, or already ``holder``'s; else say who has it.

    Taking it bumps the token, so whatever the previous holder (``holder``
    itself in an earlier life included) still has in flight is fenced. The
    update is conditional on the token just read, so of two replicas racing
    for an expired lease exactly one wins: the other's update waits for the
    winner's row lock, then finds the token moved on.
    """
    db = tx._db
    now = db.now_sql
    until, until_param = db._now_plus_sql(ttl)
    found = read(tx, name)
    if found is None:
        cols = ["name", "plugin", "holder", "token", "acquired_at", "renewed_at",
                "expires_at", "commits"]
        cols_q = [tx.quote_column(c) for c in cols]
        inserted = tx.execute(
            f"INSERT INTO {db._lease_q} ({', '.join(cols_q)}) "
            f"VALUES (%s, %s, %s, 1, {now}, {now}, {until}, 0)"
            + tx._conflict_do_nothing(cols_q),
            (name, plugin, holder, until_param))
        row = read(tx, name)
        assert row is not None
        return Acquired(inserted == 1, row)
    if found.holder == holder or found.expires_in <= 0:
        taken = tx.execute(
            f"UPDATE {db._lease_q} SET plugin = %s, holder = %s, token = token + 1, "
            f"acquired_at = {now}, renewed_at = {now}, expires_at = {until}, commits = 0 "
            f"WHERE name = %s AND token = %s AND (holder = %s OR expires_at <= {now})",
            (plugin, holder, until_param, name, found.token, holder))
        row = read(tx, name)
        assert row is not None
        if taken == 1:
            return Acquired(True, row, found)
        return Acquired(False, row)
    # Say that a replica is waiting, so that a holder that is paused hands it over.
    tx.execute(f"UPDATE {db._lease_q} SET asked_at = {now} WHERE name = %s", (name,))
    return Acquired(False, found)


def renew(tx: Transaction, name: str, token: int, ttl: float) -> LeaseRow | None:
    """Extend the lease by ``ttl`` from now if ``token`` still holds it; None if it does not.

    An expired lease that nobody took is still ours to renew: the token, not
    the clock, says who may commit. The row read back says, among others,
    whether another replica is waiting for it (`LeaseRow.asked_ago`).
    """
    db = tx._db
    until, until_param = db._now_plus_sql(ttl)
    tx.execute(f"UPDATE {db._lease_q} SET renewed_at = {db.now_sql}, expires_at = {until} "
               "WHERE name = %s AND token = %s", (until_param, name, token))
    # Read back rather than trust the count: MySQL counts only changed rows.
    row = read(tx, name)
    return row if row is not None and row.token == token else None


def release(tx: Transaction, name: str, token: int) -> bool:
    """Let others take the lease at once (it expires now) if ``token`` still holds it."""
    db = tx._db
    return tx.execute(
        f"UPDATE {db._lease_q} SET expires_at = {db.now_sql} WHERE name = %s AND token = %s",
        (name, token)) == 1

