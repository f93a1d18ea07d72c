"""Reading JSON bodies ourselves, so authentication runs before any body is parsed, and
documenting them in OpenAPI as if FastAPI had."""

from __future__ import annotations

import copy
from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from ..errors import InvalidInput, UnsupportedMedia
from .errors import invalid_input

M = TypeVar("M", bound=BaseModel)


async def read_model(request: Request, model: type[M]) -> M:
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() not in ("application/json", ""):
        raise UnsupportedMedia(f"body has to be application/json, got {ctype!r}", "Content-Type")
    raw = await request.body()
    if not raw:
        raise InvalidInput("body is empty; send a JSON object", "body")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_input(list(exc.errors(include_url=False))) from None


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(copy.deepcopy(defs[ref.split("/")[-1]]), defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def request_body(*models: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` declaring the JSON request body: one model, or any of several (refs
    inlined)."""
    schemas = []
    for model in models:
        schema = model.model_json_schema()
        schemas.append(_inline(schema, schema.get("$defs", {})))
    body = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}}
