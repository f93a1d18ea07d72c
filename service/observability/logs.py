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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _ANSI.sub("", record.getMessage()),
        }
        rid = request_id_var.get()
        if rid is not None:
            entry["request_id"] = rid
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
