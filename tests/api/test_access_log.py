"""The batched access log: the same JSON lines the formatter writes, one per request, and the
plain logging call whenever the root logger is not the service's one JSON stream handler."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from service.api.access_log import AccessLog
from service.observability.logs import JsonFormatter, request_id_var

pytestmark = pytest.mark.unit

FIELDS = {"method": "POST", "route": "/predict", "status": 200, "tier": "gold", "duration_ms": 1.5}


@contextlib.contextmanager
def only_json_handler() -> Iterator[io.StringIO]:
    """The root logger as `aim serve` configures it (pytest adds its capture handlers before a
    test runs, so this is entered inside the test)."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def test_lines_are_batched_and_shaped_like_the_formatter() -> None:
    access = AccessLog()
    with only_json_handler() as json_stream:
        for i in range(3):
            access.write(f"rid-{i}", {**FIELDS, "status": 200 + i})
        assert json_stream.getvalue() == ""  # pending until the batch fills or the timer fires
        access.flush()
    lines = [json.loads(line) for line in json_stream.getvalue().splitlines()]
    assert [e["request_id"] for e in lines] == ["rid-0", "rid-1", "rid-2"]
    assert [e["status"] for e in lines] == [200, 201, 202]
    first = lines[0]
    assert (first["level"], first["logger"], first["msg"]) == ("info", "service.access", "request")
    assert {k: first[k] for k in FIELDS if k != "status"} == {
        k: v for k, v in FIELDS.items() if k != "status"
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"]), first["ts"]
    age = datetime.now(timezone.utc) - datetime.fromisoformat(first["ts"].replace("Z", "+00:00"))
    assert timedelta(0) <= age < timedelta(minutes=5)


def test_access_lines_and_formatter_lines_have_one_layout() -> None:
    access = AccessLog()
    with only_json_handler() as json_stream:
        access.write("rid", FIELDS)
        access.flush()
        token = request_id_var.set("rid")
        try:
            logging.getLogger("service.access").info("request", extra=FIELDS)
        finally:
            request_id_var.reset(token)
    batched, formatted = (json.loads(line) for line in json_stream.getvalue().splitlines())
    assert list(batched) == list(formatted)  # same keys in the same order
    assert {k: v for k, v in batched.items() if k != "ts"} == {
        k: v for k, v in formatted.items() if k != "ts"
    }
    assert batched["ts"][:10] == formatted["ts"][:10]


def test_a_full_batch_is_written_at_once() -> None:
    access = AccessLog()
    with only_json_handler() as json_stream:
        for i in range(64):
            access.write(str(i), FIELDS)
    assert len(json_stream.getvalue().splitlines()) == 64


def test_other_handlers_get_the_plain_logging_call(caplog: pytest.LogCaptureFixture) -> None:
    access = AccessLog()
    with caplog.at_level(logging.INFO, logger="service.access"):
        access.write("rid", FIELDS)
    records = [r for r in caplog.records if r.name == "service.access"]
    assert len(records) == 1 and records[0].getMessage() == "request"
    assert records[0].__dict__["route"] == "/predict"


def test_nothing_is_written_when_the_access_logger_is_off() -> None:
    logging.getLogger("service.access").setLevel(logging.WARNING)
    try:
        access = AccessLog()
        with only_json_handler() as json_stream:
            access.write("rid", FIELDS)
            access.flush()
    finally:
        logging.getLogger("service.access").setLevel(logging.NOTSET)
    assert json_stream.getvalue() == ""
