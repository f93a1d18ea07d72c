"""Admission at the edge: how many inference requests run at once, which wait, which are refused.

The guard is consulted by the protocol (`server.GuardedHttpTools`) once a request's headers are
in, before its body is read and before any ASGI work, for `POST /predict` and
`POST /v2/models/{name}/infer`. It reads the tier the request will be served at from the
headers (the key's tier, one sha256, lowered by `X-AIM-Tier`) and:

- **starts** the request when fewer than `max_in_flight` are running;
- else lets it **wait**, highest tier first and in arrival order within a tier, for at most
  `admission_wait_s` (its task parks on one future: no middleware, routing or parsing has run, so
  a waiting request costs the event loop nothing until it starts);
- else **refuses** it with 503 and `Retry-After: 1`, written by the protocol itself. A full
  waiting room still takes a request of a higher tier than its lowest: the newest waiter of the
  lowest tier is refused for it, as the batcher's queue does.

Why wait rather than refuse: on a small machine a refusal costs about what an answer costs (the
kernel, the client's parsing, the read and the write), so past saturation every refusal takes an
answer's place; a parked request costs nothing and is served as soon as a slot frees.

**Tier priority under contention.** While requests are waiting and a higher tier that sent
under a quarter of the last second's inference requests is present (seen in the last second),
tiers below it together run no more requests than it does, or `lower_tier_in_flight` if that is
more. Every running request adds its callbacks to each turn of the event loop, and a top-tier
request needs several turns: a flood of a lower tier would otherwise make every turn long while
a light top-tier client waits on them. A top tier that sends more than that is a large part of
the load itself and is served by the waiting order alone (measured: throttling the lower tiers
then cut goodput past saturation from 0.98 to 0.56 of peak, docs/PERFORMANCE.md). Without
contention (nobody waiting) every tier runs freely, so a mixed load below saturation is not
throttled.

Refusals are counted in `aim_requests_total` (tier "none") and `aim_shed_total` (the key's
tier), and summarised in the log at most once a second; `aim_admission_waiting` is the number
waiting. The `gate` wrapper (the outermost ASGI app) parks waiting requests and frees the slot
when a request ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_to_bytes

import httptools

from ..api.deps import TIER_HEADER, caller_headers, presented_key
from ..api.errors import error_body
from .server import RELEASE, Headers, Refusal

log = logging.getLogger(__name__)

_INFER_PREFIX, _INFER_SUFFIX = b"/v2/models/", b"/infer"
_UNRANKED = 1 << 30
_TIER_HEADER = TIER_HEADER.encode()
_RECENT_S = 1.0
"""A tier counts as present for this long after its last request."""

# The same answer the batcher gives once a request is routed.
_OVERLOADED = error_body("unavailable", "the request queue is full, try again shortly")
_RETRY_AFTER = ((b"retry-after", b"1"),)

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class Admission:
    """One inference request at the edge: running, or waiting for a slot."""

    __slots__ = ("future", "guard", "rank", "route", "running", "tier", "timer")

    def __init__(self, guard: OverloadGuard, rank: int, tier: str, route: str) -> None:
        self.guard, self.rank, self.tier, self.route = guard, rank, tier, route
        self.running = False
        self.future: asyncio.Future[bool] | None = None
        self.timer: asyncio.TimerHandle | None = None

    async def wait(self) -> bool:
        """True once the request may run; False if it was refused while waiting."""
        if self.running:
            return True
        assert self.future is not None
        try:
            return await self.future
        except asyncio.CancelledError:
            if self.running:  # started just before the cancel reached it: free the slot
                self.release()
            else:
                self.guard._remove(self)
            raise

    def release(self) -> None:
        """The request ended: free its slot (idempotent; a waiter that never ran holds none)."""
        if self.running:
            self.running = False
            self.guard._finished(self.rank)

    def abandon(self) -> None:
        """The request ended or will never run (the protocol's `RELEASE`): free its slot, or
        leave the waiting room. Idempotent."""
        if self.running:
            self.release()
        elif self.guard._remove(self) and self.future is not None and not self.future.done():
            self.future.set_result(False)


class OverloadGuard:
    """The refusal hook of `server.GuardedHttpTools` for the AIM app (see the module doc)."""

    def __init__(self, state: Any) -> None:
        self.state = state
        settings = state.settings
        batch = int(settings.max_batch_size)
        self.batch = batch
        explicit = getattr(settings, "max_in_flight", None)
        self._max_in_flight: int | None = int(explicit) if explicit else None
        self.max_waiting = int(settings.queue_size)
        self.wait_s = float(getattr(settings, "admission_wait_s", 1.0))
        lower = getattr(settings, "lower_tier_in_flight", None)
        self.lower_in_flight = int(lower or max(1, batch // 8))
        self.running: dict[int, int] = {}
        self._waiting: dict[int, deque[Admission]] = {}
        self.waiting = 0
        self._seen: dict[int, float] = {}
        # Inference arrivals per rank, in the current and the last whole second.
        self._arrivals: dict[int, int] = {}
        self._last_arrivals: dict[int, int] = {}
        self._window = 0.0
        self.refusal = Refusal(503, _OVERLOADED, _RETRY_AFTER)
        self.refused = 0
        self._logged_at = 0.0
        self._logged_count = 0
        # The batcher waits a little for requests that are in the server but not yet queued.
        state.in_server = lambda: self.in_flight

    @property
    def max_in_flight(self) -> int:
        """`AIM_MAX_IN_FLIGHT`, or by default: one batch while batches run on the event loop,
        two while the forward thread runs them.

        Why: a batch on the loop overlaps nothing, so requests admitted beyond one batch only
        wait in the batcher's queue, and a backlog of a batch there sends batches to the
        thread, which serves fewer per second on CPU. Capped at one batch, the extra requests
        park at the edge instead: at 256 connections goodput went from 0.70-0.85 to 0.91-0.97 of
        peak in alternating soaks (docs/PERFORMANCE.md). With the thread (a GPU model, a slow
        one) the next batch fills while one runs."""
        if self._max_in_flight is not None:
            return self._max_in_flight
        batcher = getattr(self.state, "batcher", None)
        one = batcher is not None and bool(getattr(batcher, "runs_on_loop", False))
        return self.batch if one else 2 * self.batch

    @max_in_flight.setter
    def max_in_flight(self, value: int) -> None:
        self._max_in_flight = value

    @property
    def in_flight(self) -> int:
        """Requests running now (admitted and not yet ended)."""
        return sum(self.running.values())

    # The hook ---

    def __call__(
        self, method: bytes, url: bytes, headers: Headers, scope: dict[str, Any]
    ) -> Refusal | None:
        if method != b"POST":
            return None
        batcher = getattr(self.state, "batcher", None)
        if batcher is None:
            return None
        path = _path(url)
        if path == b"/predict":
            route = "/predict"
        elif path.startswith(_INFER_PREFIX) and path.endswith(_INFER_SUFFIX):
            route = "/v2/models/{name}/infer"
        else:
            return None
        rank, tier = self._tier_of(headers)
        now = time.monotonic()
        if rank != _UNRANKED:
            self._seen[rank] = now
        if now - self._window >= _RECENT_S:
            self._last_arrivals, self._arrivals, self._window = self._arrivals, {}, now
        self._arrivals[rank] = self._arrivals.get(rank, 0) + 1
        try:
            batcher.check_capacity(rank, tier)  # tier-aware: may displace a lower tier
        except Exception:  # Unavailable: full (nobody lower to displace) or shutting down
            return self._refuse(route)
        admission = Admission(self, rank, tier, route)
        ahead = any(r <= rank for r in self._waiting)  # equal or higher tiers wait: queue up
        if not ahead and self._may_run(rank, now):
            self._run(admission)
        elif not self._park(admission):
            return self._refuse(route, tier)
        scope["aim.admission"] = admission
        scope[RELEASE] = admission.abandon
        return None

    # Running, waiting, ending ---

    def _top(self, now: float) -> int:
        return min((r for r, t in self._seen.items() if now - t < _RECENT_S), default=_UNRANKED)

    def _may_run(self, rank: int, now: float) -> bool:
        if self.in_flight >= self.max_in_flight:
            return False
        if self.waiting:
            top = self._top(now)
            if rank > top and self._light(top):  # contention, and a light higher tier
                upper = sum(n for r, n in self.running.items() if r <= top)
                lower = self.in_flight - upper
                return lower < max(self.lower_in_flight, upper)
        return True

    def _light(self, top: int) -> bool:
        """The top tier sent under a quarter of the inference requests in the last second."""
        counts = self._last_arrivals or self._arrivals
        total = sum(counts.values())
        return total > 0 and 4 * counts.get(top, 0) < total

    def _run(self, admission: Admission) -> None:
        admission.running = True
        self.running[admission.rank] = self.running.get(admission.rank, 0) + 1
        self._gauge()

    def _park(self, admission: Admission) -> bool:
        if self.waiting >= self.max_waiting:
            lowest = max(self._waiting, default=-1)
            if lowest <= admission.rank:
                return False
            self._refuse_waiter(self._waiting[lowest][-1])  # the newest of the lowest tier
        loop = asyncio.get_running_loop()
        admission.future = loop.create_future()
        admission.timer = loop.call_later(self.wait_s, self._expire, admission)
        self._waiting.setdefault(admission.rank, deque()).append(admission)
        self.waiting += 1
        self._gauge()
        return True

    def _remove(self, admission: Admission) -> bool:
        lane = self._waiting.get(admission.rank)
        if lane is None or admission not in lane:
            return False
        lane.remove(admission)
        if not lane:
            del self._waiting[admission.rank]
        self.waiting -= 1
        if admission.timer is not None:
            admission.timer.cancel()
        self._gauge()
        return True

    def _refuse_waiter(self, admission: Admission) -> None:
        if self._remove(admission) and admission.future and not admission.future.done():
            admission.future.set_result(False)

    def _expire(self, admission: Admission) -> None:
        admission.timer = None
        self._refuse_waiter(admission)

    def _finished(self, rank: int) -> None:
        self.running[rank] -= 1
        self._drain()
        self._gauge()

    def _drain(self) -> None:
        """Start waiters, highest tier first, while they may run."""
        now = time.monotonic()
        while self._waiting:
            rank = min(self._waiting)
            if not self._may_run(rank, now):
                return
            admission = self._waiting[rank][0]
            self._remove(admission)
            if admission.future is not None and not admission.future.done():
                self._run(admission)
                admission.future.set_result(True)

    # Refusals ---

    def _refuse(self, route: str, tier: str | None = None) -> Refusal:
        """The protocol writes the answer (the batcher counted its own refusals as shed)."""
        self._count_refusal(route, tier)
        return self.refusal

    def _count_refusal(self, route: str, tier: str | None = None) -> None:
        metrics = self.state.metrics
        metrics.observe_request("none", route, 503, 0.0)
        if tier is not None:
            metrics.observe_shed(tier)
        self.refused += 1
        now = time.monotonic()
        if now - self._logged_at >= 1.0:
            log.warning("shedding load", extra={"refused": self.refused - self._logged_count})
            self._logged_at, self._logged_count = now, self.refused

    def _gauge(self) -> None:
        metrics = self.state.metrics
        metrics.admission_waiting.set(self.waiting)
        metrics.admission_in_flight.set(self.in_flight)

    def _tier_of(self, headers: Headers) -> tuple[int, str]:
        """The rank and name of the tier the request will be served at: the key's own tier,
        lowered by `X-AIM-Tier` (never raised), read from the headers as authentication will.
        A gold key that asks to be served as bronze queues as bronze: ranked by its key, its
        bulk work would push the same key's (or another gold key's) interactive requests back.
        A missing or unknown key ranks below every tier; a tier header the route will refuse
        (unknown, or above the key's) ranks by the key alone, the refusal comes from the route."""
        found = caller_headers(headers)
        key = presented_key(found)  # the key authentication will take
        tiers = getattr(self.state, "tiers", None)
        if key and tiers is not None:
            record = self.state.keys.lookup(key)
            if record is not None:
                tier = tiers.resolve(record.tier, None)
                requested = found.get(_TIER_HEADER, "").strip()
                if requested and requested in tiers:
                    lowered = tiers.get(requested)
                    if lowered.rank > tier.rank:
                        tier = lowered
                return tier.rank, tier.name
        return _UNRANKED, "none"

    # The ASGI side ---

    def gate(self, app: ASGIApp) -> ASGIApp:
        """`app` behind the guard: a waiting request runs once admitted (or gets the 503 the
        protocol would have sent), and every admitted request frees its slot when it ends."""

        async def gated(scope: dict[str, Any], receive: Any, send: Any) -> None:
            admission: Admission | None = scope.get("aim.admission")
            if admission is None:
                await app(scope, receive, send)
                return
            if not await admission.wait():
                self._count_refusal(admission.route, admission.tier)
                await _send_refusal(send, self.refusal)
                return
            try:
                await app(scope, receive, send)
            finally:
                admission.release()

        return gated


def _path(url: bytes) -> bytes:
    """The path uvicorn will route: without query or fragment, percent-decoded (so that
    `/%70redict` or `/predict#x` cannot pass the guard)."""
    try:
        path = bytes(httptools.parse_url(url).path or b"")
    except httptools.HttpParserError:
        return b""
    return unquote_to_bytes(path) if b"%" in path else path


async def _send_refusal(send: Any, refusal: Refusal) -> None:
    headers = [(b"content-type", b"application/json"), *refusal.headers]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": refusal.body})
