"""JSON log lines: no terminal colour codes (uvicorn attaches a coloured copy of its messages)."""

from __future__ import annotations

import json
import logging

import pytest

from service.observability.logs import JsonFormatter

pytestmark = pytest.mark.unit


def test_uvicorn_colour_copy_and_escapes_are_not_written() -> None:
    record = logging.makeLogRecord(
        {
            "name": "uvicorn.error",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "Started server process [\x1b[36m%d\x1b[0m]",
            "args": (42,),
            "color_message": "Started server process [\x1b[36m%d\x1b[0m]",
            "route": "/predict",
        }
    )
    line = JsonFormatter().format(record)
    assert "\x1b" not in line and "\\u001b" not in line
    entry = json.loads(line)
    assert entry["msg"] == "Started server process [42]"
    assert "color_message" not in entry and entry["route"] == "/predict"


def test_ts_is_iso_8601_utc_with_milliseconds() -> None:
    from service.observability.logs import iso_time

    assert iso_time(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_time(1_764_760_966.1239) == "2025-12-03T11:22:46.123Z"
    record = logging.makeLogRecord({"msg": "hello", "levelname": "INFO", "created": 86_400.5})
    assert json.loads(JsonFormatter().format(record))["ts"] == "1970-01-02T00:00:00.500Z"
