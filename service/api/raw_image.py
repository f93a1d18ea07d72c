"""`POST /predict` with a raw image body (`Content-Type: image/jpeg` or `image/png`): one image,
its knobs in headers or query parameters, so an image travels without base64 or JSON.

`top_k` (query) or `X-AIM-Top-K`; `focus` (query) or `X-AIM-Focus`, the same JSON list as the
body's `focus`; `tier` (query) lowers the tier as `X-AIM-Tier` does. A query parameter wins
over its header.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request

from ..errors import InvalidInput
from .errors import invalid_input
from .schemas import FocusItem

IMAGE_TYPES = ("image/jpeg", "image/png")
_FOCUS = TypeAdapter(list[FocusItem])


def is_raw_image(request: Request) -> bool:
    """Whether the body is one encoded image (by its Content-Type)."""
    ctype = request.headers.get("content-type", "")
    return ctype.split(";")[0].strip().lower() in IMAGE_TYPES


@dataclass
class RawImage:
    """One image body and the knobs that came beside it."""

    data: bytes
    top_k: int | None
    focus: list[FocusItem]
    tier: str | None


async def read_raw_image(request: Request) -> RawImage:
    """The body and its knobs; a bad knob is a 422 naming the parameter."""
    query, headers = request.query_params, request.headers
    top_k_text = query.get("top_k", headers.get("x-aim-top-k"))
    top_k = None
    if top_k_text is not None:
        try:
            top_k = int(top_k_text)
        except ValueError:
            raise InvalidInput(f"`top_k`: {top_k_text!r} is not an integer", "top_k") from None
        if not 1 <= top_k <= 1000:
            raise InvalidInput(f"`top_k`: {top_k} is not between 1 and 1000", "top_k")
    focus: list[FocusItem] = []
    focus_text = query.get("focus", headers.get("x-aim-focus"))
    if focus_text:
        try:
            focus = _FOCUS.validate_python(orjson.loads(focus_text))
        except orjson.JSONDecodeError:
            raise InvalidInput("`focus`: is not JSON (a list of focus entries)", "focus") from None
        except ValidationError as exc:
            errors = [{**e, "loc": ("focus", *e["loc"])} for e in exc.errors(include_url=False)]
            raise invalid_input(errors) from None
    data = await request.body()
    if not data:
        raise InvalidInput("body is empty; send the image's bytes", "body")
    return RawImage(bytes(data), top_k, focus, query.get("tier"))
