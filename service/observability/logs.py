"""Structured JSON logs. Records carry a request id; never a key, a hash or input data."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextvars import ContextVar
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("aim_request_id", default=None)

# Attributes every LogRecord has; anything else passed via `extra=` is emitted as a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# Defence in depth: fields with these names are never written, whoever passes them.
_REDACT = {"api_key", "key", "authorization", "x-api-key", "sha256", "secret", "inputs"}
# uvicorn attaches a terminal-coloured copy of its messages (`color_message`) for its own
# formatter; JSON lines are read by machines, so it is dropped and stray escapes are stripped.
_TERMINAL_ONLY = {"color_message"}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def iso_time(t: float) -> str:
    """Unix seconds as ISO-8601 UTC with milliseconds, `2026-12-03T11:22:46.123Z`: what log
    tools parse without being told the unit or the zone."""
    seconds = int(t)
    millis = min(int((t - seconds) * 1000), 999)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def log_entry(
    created: float, level: str, logger: str, msg: str, request_id: str | None
) -> dict[str, Any]:
    """The head of every JSON log line, in this order: ts, level, logger, msg, request_id (when
    there is one); the record's own fields follow. The formatter and the batched access log
    (api/access_log.py) both start their lines here, so there is one layout."""
    entry: dict[str, Any] = {
        "ts": iso_time(created),
        "level": level,
        "logger": logger,
        "msg": msg,
    }
    if request_id is not None:
        entry["request_id"] = request_id
    return entry


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = log_entry(
            record.created,
            record.levelname.lower(),
            record.name,
            _ANSI.sub("", record.getMessage()),
            request_id_var.get(),
        )
        for name, value in vars(record).items():
            if name in _STANDARD or name in _TERMINAL_ONLY or name.lower() in _REDACT:
                continue
            entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for the service's and uvicorn's loggers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Our middleware logs each request once, with its id; uvicorn's access log would duplicate it.
    logging.getLogger("uvicorn.access").disabled = True
