"""A plugin's own panel on the status page, described as data.

A plugin never sends HTML: it describes tables of text and buttons, and the
core's page draws them with ``textContent``, so whatever a job's error
message holds, it is shown, never run. A button POSTs to a path of the
plugin's own routes (``syncd_http_routes``) with the operator's token, after
a confirmation when it has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

__all__ = ["Action", "Panel", "Table"]


def _local_path(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    # Same origin only: the page sends the bearer token with it.
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        raise ValueError(f"an action's path must be a local path like /jobs/1/retry, got {value!r}")


@attrs.frozen
class Action:
    """A button: POST ``path`` (of this daemon), after ``confirm`` if set.

    Attributes:
        label: The button's text.
        path: A local path, e.g. ``/jobs/42/retry``.
        confirm: A question the operator must accept first, or None.
    """

    label: str
    path: str = attrs.field(validator=_local_path)
    confirm: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "path": self.path, "confirm": self.confirm}


@attrs.frozen
class Table:
    """Rows of text under a title, each row with optional buttons.

    Attributes:
        title: Shown above the table.
        columns: Column headings.
        rows: One sequence of cells per row (rendered as text).
        actions: Per row, its buttons (same length as ``rows``, or empty).
        empty: Shown instead of an empty table.
    """

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]] = ()
    actions: Sequence[Sequence[Action]] = ()
    empty: str = "nothing to show"

    def __attrs_post_init__(self) -> None:
        if self.actions and len(self.actions) != len(self.rows):
            raise ValueError("a Table's actions must have one entry per row")

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": [str(c) for c in self.columns],
            "rows": [[_cell(c) for c in row] for row in self.rows],
            "actions": [[a.as_dict() for a in row] for row in self.actions],
            "empty": self.empty,
        }


@attrs.frozen
class Panel:
    """What ``syncd_status_panel`` builds: a few tables and panel-wide buttons.

    Attributes:
        title: The panel's heading.
        tables: Its tables, in order.
        actions: Buttons under the tables.
        note: A line of text under the heading.
    """

    title: str
    tables: Sequence[Table] = ()
    actions: Sequence[Action] = ()
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "note": self.note,
            "tables": [t.as_dict() for t in self.tables],
            "actions": [a.as_dict() for a in self.actions],
        }


def _cell(value: Any) -> str | int | float | None:
    if value is None or isinstance(value, bool):
        return None if value is None else str(value).lower()
    if isinstance(value, int | float):
        return value
    return str(value)
