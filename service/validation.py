"""Field-naming validation errors: one translation of pydantic's errors, shared by the HTTP 422s
(request bodies) and the configuration models (config file, model spec), so that every refusal
starts with the field it is about: ``inputs[0].image_b64``, ``tiers.bronze.utility``,
``model.input.shape``."""

from __future__ import annotations

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
    """A value as a message quotes it, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    return field, f"{error.get('msg', 'invalid value')}, got {shown(error.get('input'))}"


def config_error(exc: ValidationError, prefix: str, kind: type[ValueError] = ValueError) -> Any:
    """The first problem of ``exc`` as ``kind("prefix.field: reason")``, for a config mapping."""
    field, reason = problem(exc.errors(include_url=False)[0], prefix)
    return kind(f"{field}: {reason}")
