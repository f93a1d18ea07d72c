"""`POST /predict` served without FastAPI's routing and dependency machinery.

Under load the event loop is what limits throughput (bench/profile_server.py), and for the
service's hottest route a third of its time went to FastAPI's per-request work around our own
code: its outer middleware and their send wrappers, the exception middleware, route matching
over every route, the dependency solver. This sits innermost among our middleware (inside the
request-id, metrics and metering middleware, which every route keeps) and outside FastAPI's
(api/app.py), and answers `POST /predict` by calling the very same functions the FastAPI route
does, in the same order: the caller dependency (key, readiness, `X-AIM-Tier`, capacity), then
the route function itself. Only the machinery around them is skipped, so answers, errors and
metrics are the same; the route stays registered for OpenAPI, for other methods (405) and for
any request this does not take.

Errors are answered here as the exception handlers do for a path without an error shape of its
own (`/predict` has none): a `ServiceError` with its status, anything else as a 500 that carries
the request id while the log gets the traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import ServiceError
from ..observability.logs import request_id_var
from .deps import Caller, CallerDependency
from .errors import error_response
from .state import AppState

log = logging.getLogger(__name__)

Endpoint = Callable[[Request, AppState, Caller], Awaitable[Response]]


class DirectRoute:
    """Serve ``method path`` with ``endpoint(request, state, caller)``; pass the rest on."""

    def __init__(
        self, app: ASGIApp, state: AppState, method: str, path: str, route: Any, endpoint: Endpoint
    ) -> None:
        self.app = app
        self.state = state
        self.method = method
        self.path = path
        self.route = route  # the registered route: its `path` labels the request's metrics
        self.endpoint = endpoint
        self.caller = CallerDependency(inference=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != self.path
            or scope["method"] != self.method
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        request = Request(scope, receive)
        try:
            caller = await self.caller(request, self.state)
            response = await self.endpoint(request, self.state, caller)
        except ServiceError as exc:
            response = error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)
        except Exception as exc:  # what the server error handler does (api/errors.py)
            log.error("unhandled error", exc_info=(type(exc), exc, exc.__traceback__))
            rid = request_id_var.get() or "unknown"
            response = error_response(500, "internal_error", f"internal error (request id {rid})")
        await response(scope, receive, send)
