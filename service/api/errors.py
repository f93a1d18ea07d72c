"""Domain errors become JSON answers here, at the edge: `{"error": {code, message, field?}}`.

A protocol with an error shape of its own (OIP v2's string, OpenAI's object) registers an
:data:`ErrorShape` for its path prefix, so every error under it, a 404 of an unknown path
included, answers in that shape. A 500 never carries internals: the client gets the request id,
the log gets the traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ..errors import InvalidInput, ServiceError
from ..observability.logs import request_id_var
from ..validation import expected_text, field_path, shown

log = logging.getLogger(__name__)

ErrorShape = Callable[[int, str, str, str | None], tuple[int, bytes]]
"""(status, code, message, field) -> (status, body): a protocol's own error answer."""


def error_body(code: str, message: str, field: str | None = None) -> bytes:
    err: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        err["field"] = field
    return orjson.dumps({"error": err})


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return Response(
        error_body(code, message, field),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def invalid_input(errors: list[Any]) -> InvalidInput:
    """The first pydantic error as a 422 naming its field (the count of the others appended)."""
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return InvalidInput(f"body is not valid JSON: {first.get('msg')}", "body")
    field = field_path(tuple(first.get("loc", ())))
    if first.get("type") == "missing":
        reason = "is missing"
    elif first.get("type") == "extra_forbidden":
        reason = "is not a known field"
    elif first.get("type") == "value_error":  # a validator's own message, in its words
        reason = str(first.get("msg", "is invalid")).removeprefix("Value error, ")
    else:
        reason = f"{expected_text(first)}, got {shown(first.get('input'))}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return InvalidInput(f"`{field}`: {reason}{more}", field)


def install_error_handlers(app: FastAPI, shapes: Mapping[str, ErrorShape] | None = None) -> None:
    """Answer every error as JSON; under a prefix of ``shapes``, in that protocol's shape."""
    by_prefix = sorted((shapes or {}).items(), key=lambda item: -len(item[0]))

    def respond(request: Request, exc: ServiceError) -> Response:
        path, status = request.url.path, exc.status
        for prefix, shape in by_prefix:
            if path == prefix or path.startswith(prefix + "/"):
                status, body = shape(exc.status, exc.code, exc.message, exc.field)
                break
        else:
            body = error_body(exc.code, exc.message, exc.field)
        return Response(
            body, status_code=status, media_type="application/json", headers=exc.headers
        )

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        return respond(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> Response:
        return await _service_error(request, invalid_input(list(exc.errors())))

    @app.exception_handler(ValidationError)
    async def _validation(request: Request, exc: ValidationError) -> Response:
        return await _service_error(request, invalid_input(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        error = ServiceError(str(exc.detail), headers=dict(exc.headers or {}))
        error.status, error.code = exc.status_code, code
        return respond(request, error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error", exc_info=(type(exc), exc, exc.__traceback__))
        rid = request_id_var.get() or "unknown"
        return respond(request, ServiceError(f"internal error (request id {rid})"))
