"""Log lines are structured and carry the plugin they came from."""

from __future__ import annotations

import json
import logging

import pytest

from syncd.logs import JsonFormatter, LogfmtFormatter, plugin_logger


def record_of(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    assert len(caplog.records) == 1
    return caplog.records[0]


class TestFormats:
    """logfmt for people and grep, JSON for log shippers."""

    def test_logfmt_quotes_what_needs_it(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.INFO, logger="syncd"):
            plugin_logger("votes").info("batch committed", extra={"items": 500, "note": "a b"})
        line = LogfmtFormatter().format(record_of(caplog))
        assert " level=info " in line
        assert " plugin=votes " in line
        assert 'msg="batch committed"' in line
        assert "items=500" in line
        assert 'note="a b"' in line

    def test_json(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.INFO, logger="syncd"):
            plugin_logger("traffic").warning("slow", extra={"seconds": 1.5})
        doc = json.loads(JsonFormatter().format(record_of(caplog)))
        assert doc["plugin"] == "traffic"
        assert doc["level"] == "warning"
        assert doc["seconds"] == 1.5
        assert doc["ts"].endswith("Z")

    def test_exception_is_one_field(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.INFO, logger="syncd"):
            try:
                raise RuntimeError("boom")
            except RuntimeError:
                plugin_logger("x").exception("crashed")
        line = LogfmtFormatter().format(record_of(caplog))
        assert "\n" not in line
        assert "RuntimeError: boom" in line

    def test_a_field_named_like_a_record_attribute_is_kept_not_fatal(
            self, caplog: pytest.LogCaptureFixture) -> None:
        """``logging`` raises KeyError for ``extra={"name": ...}``; a plugin's
        log call must not stop its work (it kept portfolio jobs from finishing)."""
        with caplog.at_level(logging.INFO, logger="syncd"):
            plugin_logger("portfolio").info("job failed", extra={
                "name": "portfolio-sync", "module": "m", "job": "7"})
        line = LogfmtFormatter().format(record_of(caplog))
        assert "name_=portfolio-sync" in line and "module_=m" in line and "job=7" in line
        assert "logger=syncd.plugin.portfolio" in line
