"""Structured log lines: logfmt by default (``ts=… level=info plugin=votes msg="…"``),
JSON on request; every line a plugin writes carries its name."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

ROOT = "syncd"

#: LogRecord attributes that are not user-supplied fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
    }
    extra = {k: v for k, v in vars(record).items() if k not in _STANDARD}
    if "plugin" in extra:
        fields["plugin"] = extra.pop("plugin")
    fields["msg"] = record.getMessage()
    fields.update(extra)
    if record.exc_info:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    return fields


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str, ensure_ascii=False)


def _logfmt_value(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' ="\n\t\\'):
        return text
    return json.dumps(text, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "logfmt") -> None:
    """Send syncd's (and hypercorn's) records to stderr as structured lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_syncd", False):
            root.removeHandler(old)
    handler._syncd = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger(ROOT).setLevel(level.upper())
    hypercorn_level = max(logging.INFO, logging.getLevelName(level.upper()))
    logging.getLogger("hypercorn.error").setLevel(hypercorn_level)


class PluginLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Adds ``plugin=<name>`` to every record, merged with the caller's extra.

    A field named like a LogRecord attribute (``name``, ``msg``, ``module``…)
    is written as ``<field>_``: `logging` raises KeyError for it, and a log
    line must never be what stops a plugin's work (it kept portfolio jobs
    from finishing under chaos).
    """

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra: Mapping[str, Any] = kwargs.get("extra") or {}
        fields = {**(self.extra or {})}
        for key, value in extra.items():
            fields[f"{key}_" if key in _STANDARD else key] = value
        kwargs["extra"] = fields
        return msg, kwargs


def plugin_logger(name: str) -> PluginLogger:
    return PluginLogger(logging.getLogger(f"{ROOT}.plugin.{name}"), {"plugin": name})


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"{ROOT}.{name}")
