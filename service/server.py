"""The HTTP server: uvicorn (httptools) with the limits it lacks, and load shedding at the edge.

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
  skipped as it arrives and the connection stays usable;
- a bound on requests per keep-alive connection (then `connection: close`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .api.errors import error_body

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
    """After a refusal, the next request on that connection is read this much later (the 503
    itself is sent at once, with `Retry-After: 1`, the same second): a client that ignores
    Retry-After cannot turn the event loop into a refusal loop while admitted requests wait.
    On this machine every answer costs about the same (kernel, wrk, parsing), so refusals
    otherwise take goodput from admitted requests one for one."""
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
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

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
        idle = (self.cycle is None or self.cycle.response_complete) and not self.pipeline
        if refuse is not None and idle:
            try:
                refusal = refuse(self.parser.get_method(), self.url, self.headers, self.scope)  # type: ignore[arg-type]
            except Exception:  # a broken hook must not turn requests into 400s: serve them
                log.exception("refusal hook failed; serving the request")
                refusal = None
            if refusal is not None:
                self._refuse_now(refusal, last)
                return
        previous = self.cycle
        super().on_headers_complete()
        if last and self.cycle is not previous:
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
        elif self.limits.refusal_pause_s > 0:
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


# Load shedding for the AIM app -----------------------------------------------------------------

_INFER_PREFIX, _INFER_SUFFIX = b"/v2/models/", b"/infer"
_UNRANKED = 1 << 30


def _queue_full(batcher: Any, queue_size: int) -> bool:
    """Whether the batcher's queue is full (its `depth`, or its queue's `full()`)."""
    depth = getattr(batcher, "depth", None)
    if depth is not None:
        return bool(depth >= queue_size)
    queue = getattr(batcher, "_queue", None)
    return bool(queue is not None and queue.full())


# The same answer the batcher gives once a request is routed.
_OVERLOADED = error_body("unavailable", "the request queue is full, try again shortly")


class _Admission:
    """One admitted request's slot, released by the middleware when the request ends."""

    __slots__ = ("by_rank", "rank")

    def __init__(self, by_rank: dict[int, int], rank: int) -> None:
        self.by_rank, self.rank = by_rank, rank

    def release(self) -> None:
        self.by_rank[self.rank] -= 1


class OverloadGuard:
    """Refuse inference requests (POST /predict, POST /v2/models/{name}/infer) with 503 before
    their body is read while the server cannot take them: under overload a refusal then costs
    a header parse and one write instead of a task, the middleware, routing and auth.

    "Cannot take them" is the batcher's own tier-aware check at the key's tier (a full queue
    still admits a request that displaces a lower tier's), plus a bound on the requests already
    admitted here and not yet finished: a burst of requests whose headers arrive in one loop
    turn would otherwise all pass a queue that is not yet full and be refused later, each after
    the whole stack ran. While the queue is not full, admitted requests of the request's tier or
    higher may be up to `queue_size + max_batch_size` (a full queue plus the batch in flight);
    lower tiers in flight do not count, since the queue would displace them for it. The middleware
    releases the admission when the request ends. Refusals are counted in `aim_requests_total`
    (tier "none") and `aim_shed_total` (the key's tier), and summarised in the log at most once
    a second, not one line each."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.by_rank: dict[int, int] = {}
        self.refusal = Refusal(503, _OVERLOADED, ((b"retry-after", b"1"),))
        self.refused = 0
        self._logged_at = 0.0
        self._logged_count = 0

    @property
    def in_flight(self) -> int:
        return sum(self.by_rank.values())

    def _admitted_at_or_above(self, rank: int) -> int:
        return sum(n for r, n in self.by_rank.items() if r <= rank)

    def _tier_of(self, headers: Headers) -> tuple[int, str]:
        """The rank and name of the key's own tier (X-AIM-Tier can only lower it, so this is
        the most the request can claim); a missing or unknown key ranks below every tier."""
        key = b""
        for name, value in headers:
            if name == b"x-api-key":
                key = value.strip()
                break
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    key = token.strip()
        tiers = getattr(self.state, "tiers", None)
        if key and tiers is not None:
            record = self.state.keys.lookup(key.decode("latin-1"))
            if record is not None:
                tier = tiers.resolve(record.tier, None)
                return tier.rank, tier.name
        return _UNRANKED, "none"

    def __call__(
        self, method: bytes, url: bytes, headers: Headers, scope: dict[str, Any]
    ) -> Refusal | None:
        if method != b"POST":
            return None
        batcher = getattr(self.state, "batcher", None)
        if batcher is None:
            return None
        path = url.split(b"?", 1)[0]
        if path == b"/predict":
            route = "/predict"
        elif path.startswith(_INFER_PREFIX) and path.endswith(_INFER_SUFFIX):
            route = "/v2/models/{name}/infer"
        else:
            return None
        settings = self.state.settings
        rank, tier = self._tier_of(headers)
        try:
            batcher.check_capacity(rank, tier)  # tier-aware: may displace a lower tier
        except Exception:  # Unavailable: full (nobody lower to displace) or shutting down
            pass
        else:
            # Only requests of this tier or higher count against it: a lower tier's in flight
            # would be displaced by it in the queue, so they never make it wait or fail.
            cap = settings.queue_size + settings.max_batch_size
            burst = self._admitted_at_or_above(rank) >= cap
            if not burst or _queue_full(batcher, settings.queue_size):
                self.by_rank[rank] = self.by_rank.get(rank, 0) + 1
                scope["aim.admission"] = _Admission(self.by_rank, rank)
                return None
        self.state.metrics.observe_request("none", route, 503, 0.0)
        self.refused += 1
        now = time.monotonic()
        if now - self._logged_at >= 1.0:
            log.warning("shedding load", extra={"refused": self.refused - self._logged_count})
            self._logged_at, self._logged_count = now, self.refused
        return self.refusal


def limits_from(settings: Any) -> ServerLimits:
    return ServerLimits(
        header_timeout_s=settings.header_timeout_s,
        max_header_bytes=settings.max_header_bytes,
        keep_alive_s=settings.keep_alive_s,
        max_requests_per_connection=settings.max_requests_per_connection,
    )


def serve(app: Any, host: str, port: int, limits: ServerLimits) -> None:
    """Run `app` on uvicorn with the guarded protocol (and, for the AIM app, load shedding)."""
    # The forward thread releases the GIL in every torch op and must take it back from the
    # event loop each time; with the default 5 ms switch interval a busy loop (overload) makes
    # each of those dozens of ops per batch wait up to 5 ms, and goodput collapses.
    sys.setswitchinterval(limits.switch_interval_s)
    state = getattr(getattr(app, "state", None), "aim", None)
    refuse = OverloadGuard(state) if state is not None else None
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_class(limits, refuse),
        log_config=None,
        access_log=False,
        timeout_keep_alive=max(1, round(limits.keep_alive_s)),
        timeout_graceful_shutdown=30,
    )
    uvicorn.Server(config).run()
