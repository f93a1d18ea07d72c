"""The access log: one JSON line per request, cheap enough for the hot path.

Through `logging` each line cost about 36 µs on this machine (a LogRecord, `json.dumps` in the
formatter, one write to stderr per request), several times the cost of the metrics. When the
root logger writes through the service's own JSON handler (what `aim serve` configures), the
line is serialised here with orjson, in the same shape the formatter gives
(`observability.logs.log_entry`: ts, level, logger, msg, request_id, then the fields), and lines
are written in batches: when 64 are pending or 0.2 s after the first pending one, whichever
comes first. Anything else (tests capturing logs,
another handler) gets the plain `logging` call, so nothing is lost or reshaped.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import time
from typing import Any

import orjson

from ..observability.logs import JsonFormatter, log_entry

log = logging.getLogger("service.access")
_BATCH = 64
_DELAY_S = 0.2


class AccessLog:
    def __init__(self) -> None:
        self._pending: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._stream: Any = None
        self._handler: logging.Handler | None = None
        atexit.register(self.flush)

    def _json_stream(self) -> Any:
        """The root handler's stream when it is the service's one JSON stream handler."""
        handlers = logging.getLogger().handlers
        if len(handlers) != 1:
            return None
        handler = handlers[0]
        if handler is not self._handler:
            self._handler = handler
            plain = (
                isinstance(handler, logging.StreamHandler)
                and isinstance(handler.formatter, JsonFormatter)
                and handler.level <= logging.INFO
                and not handler.filters
            )
            self._stream = handler.stream if plain else None  # type: ignore[attr-defined]
        return self._stream

    def write(self, rid: str, fields: dict[str, Any]) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        stream = self._json_stream() if log.propagate and not log.handlers else None
        if stream is None:
            log.info("request", extra=fields)
            return
        entry = log_entry(time.time(), "info", log.name, "request", rid) | fields
        self._pending.append(orjson.dumps(entry, default=str))
        if len(self._pending) >= _BATCH:
            self.flush()
        elif self._timer is None:
            with contextlib.suppress(RuntimeError):  # no running loop: flushed at the batch
                self._timer = asyncio.get_running_loop().call_later(_DELAY_S, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        stream = self._stream
        if stream is None:
            return
        with contextlib.suppress(Exception):  # a closed stderr never breaks a request
            stream.write((b"\n".join(lines) + b"\n").decode())
            stream.flush()
