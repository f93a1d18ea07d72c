"""Pure ASGI middleware (no BaseHTTPMiddleware: it costs throughput): request ids, body size
limit, and one metrics observation plus one structured log line per request (batched, see
access_log.py)."""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..observability.logs import request_id_var
from ..observability.metrics import Metrics
from .access_log import AccessLog
from .errors import error_body

log = logging.getLogger(__name__)
_RID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_UNMATCHED = "unmatched"


def _request_ids() -> itertools.count[int]:
    return itertools.count(int.from_bytes(os.urandom(6), "big") << 20)


class _Gone:
    """`_read_body`'s answer for a client that went away before its body was complete."""


_GONE = _Gone()


class RequestIds:
    """Unique request ids without a uuid4 per request (2% of the event loop under load): a
    random 48-bit prefix per process, then a counter. Ids only correlate logs and answers;
    they are not secrets."""

    def __init__(self) -> None:
        self._next = _request_ids().__next__

    def __call__(self) -> str:
        return f"{self._next():016x}"


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.new_id = RequestIds()
        self.access = AccessLog()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        supplied = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = supplied if supplied and _RID.fullmatch(supplied) else self.new_id()
        token = request_id_var.set(rid)
        # 499 (client closed request, as nginx logs it) unless a response was started: a client
        # that leaves before the answer is not a server error.
        status = 499
        raw_rid = rid.encode()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", raw_rid)]
            await send(message)

        try:
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                await self._too_large(send_wrapper)
                return
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body = await self._read_body(receive)
                if isinstance(body, _Gone):
                    # The client left mid-upload: nothing to answer, nothing to bill, and not
                    # an error of ours (one line; the request id is in the log context).
                    log.info("client disconnected before its request body was complete")
                    return
                if body is None:
                    await self._too_large(send_wrapper)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_wrapper)
        except Exception:
            status = 500
            raise
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            path = getattr(route, "path", _UNMATCHED)
            tier = scope.get("aim.tier", "none")
            if path not in ("/metrics", "/healthz", "/readyz"):
                self.metrics.observe_request(tier, path, status, elapsed)
            self.access.write(
                rid,
                {
                    "method": scope["method"],
                    "route": path,
                    "status": status,
                    "tier": tier,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
            request_id_var.reset(token)

    async def _read_body(self, receive: Receive) -> bytes | _Gone | None:
        """The whole body, None once it passes the limit (chunked bodies included), or `_GONE`
        when the client disconnects first."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _GONE
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _too_large(self, send: Send) -> None:
        body = error_body(
            "payload_too_large", f"request body is over {self.max_body} bytes", "body"
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        # After the body, pass through so disconnects are still seen (is_disconnected).
        message: Any = await receive()
        return message

    return replay
