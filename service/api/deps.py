"""Request dependencies: the app state, and the caller (key, tier) that every route serves.

Every inference route is parse → call → encode: the caller dependency authenticates (before any
body is read), checks readiness, resolves the tier named in `X-AIM-Tier` and refuses at once
when the queue is full; once the body is parsed, :meth:`Caller.admit` applies the tier policy
(``tiers.tier_policy``: lowering, items, focus) and the account's limits (``accounting``: quota,
rate limit, shared by every replica when Redis holds them).
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

from fastapi import Depends, Request

from ..access.accounting import Accounting
from ..access.keys import KeyRecord
from ..access.tiers import Tier, TierTable, tier_policy
from ..errors import BadRequest, Unauthorized
from ..modulation import KeyedNoise
from ..runtime import Runtime
from .metering import note_caller, note_reservation
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
    """Who is calling (the key's record), the runtime that serves it and the tier it is served
    at: the key's own or the one `X-AIM-Tier` asked for, until :meth:`admit` settles it."""

    key: KeyRecord
    tier: Tier
    allowed: list[str]
    """The tiers this key may use: its own and every one below it."""
    runtime: Runtime
    tiers: TierTable = field(repr=False)
    keyed: KeyedNoise = field(repr=False)
    max_items: int = field(repr=False)
    scope: MutableMapping[str, Any] = field(repr=False)
    accounting: Accounting = field(repr=False)

    @property
    def seed(self) -> int:
        """The keyed-noise seed of this caller's tier (never of the key: per-key noise is undone
        by a vote across many cheap keys, docs/MODULATION.md)."""
        return self.keyed.tier_seed(self.tier.name)

    async def admit(self, items: int, focus: bool, tier: str | None = None) -> Caller:
        """The caller at the tier this request is served at, after the tier policy: ``tier``
        (a tier the body names) lowers it; refusals are 403, 413, 422, 429 (rate limit or
        quota, per account across its keys) or 503 (the quota's shared state unreachable)."""
        served = tier_policy(
            self.tiers,
            self.key.tier,
            self.key.account,
            tier or self.tier.name,
            items=items,
            focus=focus,
            max_items=self.max_items,
            rate_limit=False,  # the account's limits come next, from `accounting`
        )
        self.scope["aim.tier"] = served.name  # the metrics label of this request
        note_caller(self.scope, self.key.account, served.name, items)
        reservation = await self.accounting.admit(
            self.key.account, served.name, served.limiter, items
        )
        note_reservation(self.scope, reservation)
        return replace(self, tier=served)


_TIER = TIER_HEADER.encode()
_CALLER_HEADERS = (b"x-api-key", b"authorization", _TIER)


def caller_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[bytes, str]:
    """The key and tier headers in one pass over the raw (lower-cased) headers of a request's
    scope, or of the protocol before any ASGI work (`overload.OverloadGuard`); the first of
    each wins, as with `request.headers.get`. Per request this replaces three lookups that each
    decoded every header, and a missing one raised and caught KeyError inside Mapping.get (3 %
    of the event loop's time under load, bench/profile_server.py --gil)."""
    found: dict[bytes, str] = {}
    for name, value in raw:
        if name in _CALLER_HEADERS and name not in found:
            found[name] = value.decode("latin-1")
    return found


def presented_key(headers: dict[bytes, str]) -> str | None:
    """The API key from the request's `caller_headers`: X-API-Key, else a bearer token."""
    return _api_key_header(headers) or _bearer(headers)


def _api_key_header(headers: dict[bytes, str]) -> str | None:
    key = headers.get(b"x-api-key", "").strip()
    return key or None  # a blank one counts as absent, as an empty one does


def _bearer(headers: dict[bytes, str]) -> str | None:
    scheme, _, token = headers.get(b"authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def authenticate(headers: dict[bytes, str], state: AppState) -> KeyRecord:
    key, bearer = _api_key_header(headers), _bearer(headers)
    if key is not None and bearer is not None and key != bearer:
        # Which one was meant is a guess either way, and a guess may serve the wrong account.
        raise BadRequest(
            "X-API-Key and Authorization: Bearer carry different keys; send one of them",
            field="X-API-Key",
        )
    key = key or bearer
    if key is None:
        raise Unauthorized(
            "missing API key: send X-API-Key or Authorization: Bearer", field="X-API-Key"
        )
    record = state.keys.lookup(key)
    if record is None:
        raise Unauthorized("unknown API key", field="X-API-Key")
    return record


class CallerDependency:
    """Authenticate, check readiness, resolve the `X-AIM-Tier` tier; for inference routes also
    refuse at once (503) when the queue is full. All of it before the body is read."""

    def __init__(self, inference: bool) -> None:
        self.inference = inference

    async def __call__(self, request: Request, state: State) -> Caller:
        headers = caller_headers(request.scope["headers"])
        record = authenticate(headers, state)
        runtime, tiers = state.require_ready()
        requested = headers.get(_TIER)
        tier = tiers.resolve(record.tier, requested.strip() if requested else None)
        request.scope["aim.tier"] = tier.name
        note_caller(request.scope, record.account, tier.name)  # its errors are billed from here
        if self.inference:
            runtime.check_capacity(tier.rank, tier.name)
        return Caller(
            record,
            tier,
            tiers.allowed_for(record.tier),
            runtime,
            tiers,
            state.keyed,
            state.settings.max_items,
            request.scope,
            state.accounting,
        )


CurrentCaller = Annotated[Caller, Depends(CallerDependency(inference=False))]
"""The caller of a route that reads model facts (`GET /model`)."""
InferenceCaller = Annotated[Caller, Depends(CallerDependency(inference=True))]
"""The caller of an inference route."""
