"""The HTTP server: uvicorn (httptools) with the limits it lacks, and a hook to refuse early.

uvicorn has no header read timeout (its keep-alive timer is reset by every byte, so a client
sending a header byte per second holds a connection for ever), no header size limit with
httptools (a 1 MB header is read and answered) and no way to refuse a request before an ASGI
task, the framework's middleware and routing have run. `GuardedHttpTools` adds all three in the
protocol, where they cost nothing on the normal path:

- a header deadline from the first byte of each request (and from the connection, for one that
  sends nothing): headers still incomplete when it fires close the connection with 408;
- a header size limit counted while parsing: over it, 431 and close;
- a `Refuse` hook consulted once the headers are in, before the body is read and before any
  ASGI work: under overload the answer (503) is written straight from the protocol, the body is
  skipped as it arrives and the connection stays usable. Pipelined requests (sent before the
  previous answer) are consulted too; a refused one is answered in its turn (answers on a
  connection go out in order) by a small ASGI app in place of the service's. Whatever the hook
  reserved (`RELEASE` in the scope) is released on every path: when the request's task ends
  however it ends, and for a request that never runs (a WebSocket upgrade, a pipelined request
  on a connection that closed first, a URL the parser rejects after the hook);
- a bound on requests per keep-alive connection (then `connection: close`);
- one `send()` per answer instead of two (head and body together, `HeadWithBody`).
"""

from __future__ import annotations

import contextvars
import logging
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ..api.errors import error_body
from .coalescing import HeadWithBody

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Refusal:
    """An answer written by the protocol itself (no ASGI task, no routing, body not read)."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


Refuse = Callable[[bytes, bytes, Headers, dict[str, Any]], Refusal | None]
"""(method, raw URL, headers, ASGI scope) → a refusal, or None to serve the request normally
(the hook may mark the scope, e.g. with an admission to release when the request ends)."""

RELEASE = "aim.release"
"""Scope key: an idempotent callable the hook leaves for what it reserved; the protocol calls it
once the request's task is done, or at once when the request will never run."""


def _release(scope: dict[str, Any] | None) -> None:
    release = scope.get(RELEASE) if scope else None
    if release is not None:
        try:
            release()
        except Exception:  # the accounting must not break the connection
            log.exception("releasing a request's reservation failed")


@dataclass(frozen=True)
class ServerLimits:
    header_timeout_s: float = 10.0
    """Seconds from a request's first byte (or the connection's start) to its last header."""
    max_header_bytes: int = 16 * 1024
    """Request line plus headers; larger gets 431."""
    keep_alive_s: float = 5.0
    """Idle seconds between requests on a connection before it is closed."""
    max_requests_per_connection: int = 10_000
    """Then the connection is closed (spreads long-lived clients over restarts and replicas)."""
    refusal_pause_s: float = 1.0
    """After a refusal or any other 503, the next request on that connection is read this much
    later (the 503 itself is sent at once, with `Retry-After: 1`, the same second): a client
    that ignores Retry-After cannot turn the event loop into a refusal loop while admitted
    requests wait. On this machine every answer costs about the same (kernel, wrk, parsing),
    so refusals otherwise take goodput from admitted requests one for one."""
    switch_interval_s: float = 0.0005
    """How long a thread waiting for the GIL waits before the holder is asked to drop it."""


class _HeaderTooLarge(Exception):
    """Raised inside a parser callback; httptools re-raises it from feed_data."""


def _response(status: int, body: bytes, extra: Headers, default: Headers, close: bool) -> bytes:
    parts = [STATUS_LINE[status]]
    for name, value in (*default, *extra):
        parts += [name, b": ", value, b"\r\n"]
    parts += [b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode()]
    parts += [b"\r\nconnection: close\r\n\r\n" if close else b"\r\n\r\n", body]
    return b"".join(parts)


def _refusing(refusal: Refusal) -> Any:
    """An ASGI app that answers `refusal` (for a pipelined request the hook refused)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"application/json"), *refusal.headers]
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": refusal.body})

    return app


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol plus header deadline, header size limit, early refusal and
    a keep-alive request bound. Configure with `protocol_class`, not by instantiating."""

    limits: ClassVar[ServerLimits] = ServerLimits()
    refuse: ClassVar[Refuse | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: Any = None
        self._in_headers = False
        self._header_bytes = 0
        self._raw_header_bytes = 0
        self._oversized = False
        self._discarding = False
        self._discard_keep_alive = True
        self._requests = 0

    # Header deadline ----------------------------------------------------------------------------

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(
            self.limits.header_timeout_s, self._header_timeout
        )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            body = error_body(
                "request_timeout",
                f"request headers not received within {self.limits.header_timeout_s:g} s",
            )
            self.transport.write(_response(408, body, [], [], close=True))
            self.transport.close()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.transport = HeadWithBody(transport, self.loop)  # type: ignore[assignment]
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        # Pipelined requests not started yet never will be (uvicorn starts the next one only on
        # an open transport): free what the hook reserved for them.
        for cycle, _ in self.pipeline:
            _release(cycle.scope)  # type: ignore[arg-type]
        self.pipeline.clear()
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        # uvicorn's, plus: the reservation is freed when the task is done, even one cancelled
        # before the app was entered (the gate frees it as well; release is idempotent).
        if getattr(self.config, "reset_contextvars", False):
            task = self.loop.create_task(cycle.run_asgi(app), context=contextvars.Context())
        else:
            task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self.tasks.discard)
        if RELEASE in cycle.scope:
            scope = cycle.scope
            task.add_done_callback(lambda _: _release(scope))
        self.tasks.add(task)

    # Header size ----------------------------------------------------------------------------------

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.limits.max_header_bytes:
            self._oversized = True
            raise _HeaderTooLarge

    def _send_431(self) -> None:
        self._cancel_header_timer()
        body = error_body(
            "header_too_large",
            f"request line and headers are over {self.limits.max_header_bytes} bytes",
            "headers",
        )
        self.transport.write(_response(431, body, [], [], close=True))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self._oversized:
                self._send_431()
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        # A header still incomplete after this chunk: everything received so far was header
        # (httptools buffers a header it has not finished, so its callbacks cannot count it).
        if self._in_headers and not self.transport.is_closing():
            self._raw_header_bytes += len(data)
            if self._raw_header_bytes > self.limits.max_header_bytes:
                self._oversized = True
                self._send_431()

    # Parser callbacks -----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = self._raw_header_bytes = 0
        self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._cancel_header_timer()
        self._requests += 1
        last = self._requests >= self.limits.max_requests_per_connection
        refuse = type(self).refuse
        scope: dict[str, Any] = self.scope  # type: ignore[assignment]
        # A WebSocket upgrade leaves HTTP: no request of this protocol will run for it.
        upgrade = bool(self.parser.should_upgrade()) and self._should_upgrade()
        refusal = None
        if refuse is not None and not upgrade:
            try:
                refusal = refuse(self.parser.get_method(), self.url, self.headers, scope)
            except Exception:  # a broken hook must not turn requests into 400s: serve them
                log.exception("refusal hook failed; serving the request")
                refusal = None
        idle = (self.cycle is None or self.cycle.response_complete) and not self.pipeline
        if refusal is not None and idle:
            self._refuse_now(refusal, last)
            return
        previous = self.cycle
        try:
            super().on_headers_complete()
        except BaseException:  # e.g. a URL httptools rejects: the request will never run
            _release(scope)
            raise
        if self.cycle is previous:  # no request was made (an upgrade)
            _release(scope)
            return
        if refusal is not None:  # queued behind a running request: refused in its turn
            queued = self.pipeline[0] if self.pipeline else None
            if queued is not None and queued[0] is self.cycle:
                self.pipeline[0] = (self.cycle, _refusing(refusal))
        if last:
            self.cycle.keep_alive = False

    def _refuse_now(self, refusal: Refusal, last: bool) -> None:
        keep = self.parser.should_keep_alive() and not last and not self.expect_100_continue
        self._discarding, self._discard_keep_alive = True, keep
        self.transport.write(
            _response(
                refusal.status,
                refusal.body,
                list(refusal.headers),
                self.server_state.default_headers,
                close=not keep,
            )
        )
        if not keep:
            self.transport.close()
        else:
            self._pause_after_refusal()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Every 503 (queue full, displaced, an edge wait that expired, not ready) pauses the
        # connection as a refusal from the protocol does: a client that retries at once would
        # otherwise spend the loop's time on refusals, as many as it can send.
        transport = self.transport
        if isinstance(transport, HeadWithBody) and transport.unavailable:
            transport.unavailable = False
            if not transport.is_closing():
                self._pause_after_refusal()

    def _pause_after_refusal(self) -> None:
        if self.limits.refusal_pause_s > 0:
            self.flow.pause_reading()
            self.loop.call_later(self.limits.refusal_pause_s, self._resume_after_refusal)

    def _resume_after_refusal(self) -> None:
        if not self.transport.is_closing():
            self.flow.resume_reading()

    def on_body(self, body: bytes) -> None:
        if self._discarding:
            return  # the body of a refused request: dropped as it arrives, never buffered
        super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._discarding:
            super().on_message_complete()
            return
        self._discarding = False
        self.server_state.total_requests += 1
        if self._discard_keep_alive and not self.transport.is_closing():
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )


def protocol_class(limits: ServerLimits, refuse: Refuse | None = None) -> type[GuardedHttpTools]:
    """A `GuardedHttpTools` subclass bound to these limits and refusal hook (uvicorn builds one
    protocol per connection from the class, so per-server settings live on the class)."""
    return type(
        "GuardedHttpTools",
        (GuardedHttpTools,),
        {"limits": limits, "refuse": staticmethod(refuse) if refuse else None},
    )


def limits_from(settings: Any) -> ServerLimits:
    return ServerLimits(
        header_timeout_s=settings.header_timeout_s,
        max_header_bytes=settings.max_header_bytes,
        keep_alive_s=settings.keep_alive_s,
        max_requests_per_connection=settings.max_requests_per_connection,
    )


def serve(
    app: Any,
    host: str,
    port: int,
    limits: ServerLimits,
    refuse: Refuse | None = None,
    sock: socket.socket | None = None,
    on_server: Callable[[uvicorn.Server], None] | None = None,
) -> None:
    """Run `app` on uvicorn with the guarded protocol and, when given, the refusal hook; on
    ``sock`` (a worker's inherited listening socket) instead of binding host:port.
    ``on_server`` gets the server before it runs (to stop it: ``server.should_exit = True``)."""
    # The forward thread releases the GIL in every torch op and must take it back from the
    # event loop each time; with the default 5 ms switch interval a busy loop (overload) makes
    # each of those dozens of ops per batch wait up to 5 ms, and goodput collapses.
    sys.setswitchinterval(limits.switch_interval_s)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_class(limits, refuse),
        log_config=None,
        access_log=False,
        # Nothing reads the client's address (limits are per account, logs carry request ids),
        # so X-Forwarded-For is not worth a middleware layer on every request.
        proxy_headers=False,
        server_header=False,  # no `server: uvicorn` on every answer
        timeout_keep_alive=max(1, round(limits.keep_alive_s)),
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    if on_server is not None:
        on_server(server)
    server.run(sockets=[sock] if sock is not None else None)
