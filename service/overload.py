"""Load shedding at the edge: refuse inference requests the server cannot take, from the
protocol (`server.GuardedHttpTools`), before their body is read or any ASGI work runs."""

from __future__ import annotations

import logging
import time
from typing import Any

from .api.errors import error_body
from .server import Headers, Refusal

log = logging.getLogger(__name__)

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
