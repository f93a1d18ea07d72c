"""Request dependencies: the app state, the caller (key and tier) and its rate limit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from ..errors import RateLimited, Unauthorized
from ..keys import KeyRecord
from ..ratelimit import RateLimiter
from ..tiers import Tier
from .state import AppState

TIER_HEADER = "x-aim-tier"


async def get_state(request: Request) -> AppState:
    # async: FastAPI runs a plain `def` dependency on its thread pool, a thread hand-off per
    # request that cost 15% of the event loop under load (bench/profile_server.py).
    state: AppState = request.app.state.aim
    return state


State = Annotated[AppState, Depends(get_state)]


@dataclass(frozen=True)
class Caller:
    """Who is calling (the key's record) and the tier this request is served at."""

    key: KeyRecord
    tier: Tier
    allowed: list[str]


def presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def authenticate(request: Request, state: AppState) -> KeyRecord:
    key = presented_key(request)
    if key is None:
        raise Unauthorized(
            "missing API key: send X-API-Key or Authorization: Bearer", field="X-API-Key"
        )
    record = state.keys.lookup(key)
    if record is None:
        raise Unauthorized("unknown API key", field="X-API-Key")
    return record


def get_caller(request: Request, state: State) -> Caller:
    """Authenticate, then resolve the tier (the key's own, or a lower one it asks for)."""
    record = authenticate(request, state)
    _, tiers = state.require_ready()
    requested = request.headers.get(TIER_HEADER)
    return resolve_caller(request, record, tiers, requested)


def resolve_caller(request: Request, record: KeyRecord, tiers, requested: str | None) -> Caller:  # type: ignore[no-untyped-def]
    tier = tiers.resolve(record.tier, requested.strip() if requested else None)
    request.scope["aim.tier"] = tier.name
    return Caller(record, tier, tiers.allowed_for(record.tier))


def charge(caller: Caller) -> None:
    """Take one request from the caller's token bucket for its tier; 429 when empty."""
    limiter = caller.tier.limiter
    if limiter is None:
        return
    wait = limiter.acquire(caller.key.id)
    if wait > 0:
        raise RateLimited(
            f"rate limit of tier {caller.tier.name!r} exceeded; retry in {wait:.2f}s",
            headers={"Retry-After": RateLimiter.retry_after_header(wait)},
        )


CurrentCaller = Annotated[Caller, Depends(get_caller)]
