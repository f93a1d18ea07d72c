"""Field-naming validation errors: one translation of pydantic's errors, shared by the HTTP 422s
(request bodies) and the configuration models (config file, model spec), so that every refusal
starts with the field it is about: ``inputs[0].image_b64``, ``tiers.bronze.utility``,
``model.input.shape``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError


class FieldError(ValueError):
    """A validation error whose message already names its field (``tiers: ...``); raised inside
    a validator, it is passed on as it is instead of under the validator's own field."""


def field_path(loc: Sequence[Any], prefix: str = "") -> str:
    """('body', 'inputs', 0, 'image_b64') -> 'inputs[0].image_b64', after ``prefix`` if any."""
    out = prefix
    for part in loc:
        if part == "body":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def shown(value: Any, limit: int = 80) -> str:
    """A value as a message quotes it, in JSON's words (null, true, "text"), since that is what
    the client sent; cut to ``limit`` characters."""
    text = json_text(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_text(value: Any) -> str:
    """``value`` written as JSON would write it; what JSON cannot write (NaN, a tensor) as repr."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        value = value.item()  # a numpy or torch scalar reads as the number it holds
    if isinstance(value, float):
        return repr(value)  # nan and inf, which JSON lacks, and 2.5 as 2.5
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError):
        return repr(value)


# Pydantic's wording per error type, in the words of a JSON client: "a whole number", not
# "a valid integer, got a number with a fractional part".
_EXPECTED = {
    "int_type": "should be an integer",
    "int_parsing": "should be an integer",
    "int_from_float": "should be a whole number",
    "float_type": "should be a number",
    "float_parsing": "should be a number",
    "finite_number": "should be a finite number",
    "bool_type": "should be true or false",
    "bool_parsing": "should be true or false",
    "string_type": "should be a string",
    "list_type": "should be an array",
    "tuple_type": "should be an array",
    "dict_type": "should be an object",
    "model_type": "should be an object",
    "model_attributes_type": "should be an object",
}


def expected_text(error: Any) -> str:
    """What a pydantic error says the value should be, without Python's words: "should be a
    whole number", "should be less than or equal to 10"."""
    kind = error.get("type", "")
    if kind in _EXPECTED:
        return _EXPECTED[kind]
    msg = str(error.get("msg", "is invalid"))
    for python, plain in (("Input ", ""), ("dictionary", "object"), ("valid list", "array")):
        msg = msg.replace(python, plain)
    return msg[:1].lower() + msg[1:]


def problem(error: Any, prefix: str = "") -> tuple[str, str]:
    """(field, reason) of one pydantic error: a validator's own message as it wrote it (one
    that names its field, a :class:`FieldError`, whole), pydantic's with the value it got."""
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        field, _, reason = str(cause).partition(": ")
        return field, reason
    field = field_path(tuple(error.get("loc", ())), prefix)
    kind = error.get("type", "")
    if kind == "missing":
        return field, "missing"
    if kind == "extra_forbidden":
        return field, "unknown field"
    if kind == "value_error":
        return field, str(cause) if cause is not None else error.get("msg", "invalid value")
    return field, f"{expected_text(error)}, got {shown(error.get('input'))}"


def config_error(exc: ValidationError, prefix: str, kind: type[ValueError] = ValueError) -> Any:
    """The first problem of ``exc`` as ``kind("prefix.field: reason")``, for a config mapping."""
    field, reason = problem(exc.errors(include_url=False)[0], prefix)
    return kind(f"{field}: {reason}")
