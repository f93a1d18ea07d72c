"""Admin routes (`/admin/...`), for the operator: mounted only when `AIM_ADMIN_TOKEN` is set.

The admin token is not an API key and no API key opens these routes: no credentials answer 401,
any other bearer token (an API key included) 403.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from ...access.usage import parse_time
from ...errors import Forbidden, InvalidInput, Unauthorized
from ..body import json_response
from ..deps import State

router = APIRouter(prefix="/admin", tags=["admin"])


def require_admin(request: Request, state: State) -> None:
    token = state.settings.admin_token
    assert token is not None  # the router is not mounted without one
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized("admin routes need Authorization: Bearer <admin token>", "Authorization")
    # Digests of equal length, compared in constant time: the token's length does not leak.
    expected = hashlib.sha256(token.get_secret_value().encode()).digest()
    if not hmac.compare_digest(hashlib.sha256(presented.strip().encode()).digest(), expected):
        raise Forbidden("not the admin token", "Authorization")


def _time(value: str | None, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return parse_time(value, name)
    except ValueError as exc:
        raise InvalidInput(str(exc), name) from None


@router.get("/usage", summary="Usage per account and tier (2xx work, and errors)")
async def usage(
    request: Request,
    state: State,
    since: str | None = Query(None, description="Unix seconds or ISO 8601; whole minutes"),
    until: str | None = Query(None, description="Unix seconds or ISO 8601 (exclusive)"),
) -> Response:
    require_admin(request, state)
    start, end = _time(since, "since"), _time(until, "until")
    if start is not None and end is not None and end < start:
        raise InvalidInput(f"until: {until!r} is before since ({since!r})", "until")
    return json_response({"accounts": await state.accounting.usage(start, end)})
