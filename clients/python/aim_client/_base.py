"""What `AimClient` and `AsyncAimClient` share: configuration, request building, the retry
policy, and turning responses and transport failures into results and errors.

Nothing here touches the network; the twins in `_client.py` only send, sleep and read, so the
two cannot drift apart in what they send or how they decide.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from . import _errors
from ._errors import (
    AimError,
    APIError,
    AuthenticationError,
    BadRequestError,
    InvalidResponseError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
)
from ._inputs import FocusArg, Inputs, encode_focus, encode_inputs
from ._version import __version__

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "BaseAimClient",
    "api_error_from_response",
    "parse_retry_after",
]

logger = logging.getLogger("aim_client")

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_RETRIES = 2
API_KEY_ENV = "AIM_API_KEY"

INITIAL_BACKOFF = 0.5
"""Seconds before the first retry when the server gives no `Retry-After`; doubles per retry."""
MAX_BACKOFF = 8.0
MAX_RETRY_AFTER = 60.0
"""A `Retry-After` longer than this is not waited out: the error is raised for the caller to
decide, rather than blocking a call for minutes."""
RETRY_STATUSES = frozenset({429, 502, 503, 504})
"""Rate limited, or the server (or a proxy before it) is momentarily unable to answer. Other 4xx
would fail the same way again; a 500 is a server bug that retrying only hides."""

USER_AGENT = f"aim-client/{__version__} python-httpx/{httpx.__version__}"
JSON = "application/json"
EVENT_STREAM = "text/event-stream"


class _Secret:
    """Holds the API key so that `repr`, `vars()` and tracebacks with locals never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


_STATUS_ERRORS: dict[int, type[APIError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    413: PayloadTooLargeError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def _error_class(status: int) -> type[APIError]:
    if status in _STATUS_ERRORS:
        return _STATUS_ERRORS[status]
    if 400 <= status < 500:
        return BadRequestError
    if status >= 500:
        return ServerError
    return APIError


def _field_from_loc(loc: object) -> str | None:
    """FastAPI's `["body", "inputs", 0]` as the contract's `inputs[0]`."""
    if not isinstance(loc, list):
        return None
    parts = [p for p in loc if p not in ("body", "query", "header")]
    field = ""
    for part in parts:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    return field or None


def _error_details(response: httpx.Response) -> tuple[str, str, str | None]:
    """(code, message, field) from an error body; tolerant of bodies that miss the contract."""
    default_code = f"http_{response.status_code}"
    default_message = response.reason_phrase or "error"
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return default_code, f"{default_message}: {text[:200]}" if text else default_message, None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        field = error.get("field")
        return (
            str(error.get("code") or default_code),
            str(error.get("message") or default_message),
            str(field) if field is not None else None,
        )
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):  # FastAPI's HTTPException
        return default_code, detail, None
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):  # FastAPI validation
        first = detail[0]
        return (
            "invalid_input",
            str(first.get("msg") or default_message),
            _field_from_loc(first.get("loc")),
        )
    return default_code, default_message, None


def _redact(text: str, secret: _Secret | None) -> str:
    if secret is not None and secret.get() and secret.get() in text:
        return text.replace(secret.get(), "***")
    return text


def api_error_from_response(response: httpx.Response, secret: _Secret | None = None) -> APIError:
    """The `APIError` subclass for an error response, with code, message, field and request id.

    The response body must already be read. Should the server ever echo the API key, it is
    replaced by `***` before it can reach a message or a log.
    """
    status = response.status_code
    code, message, field = _error_details(response)
    cls = _error_class(status)
    kwargs: dict[str, Any] = {
        "status": status,
        "code": code,
        "field": _redact(field, secret) if field is not None else None,
        "request_id": response.headers.get("X-Request-ID"),
    }
    if issubclass(cls, (RateLimitError, ServiceUnavailableError)):
        kwargs["retry_after"] = parse_retry_after(response.headers.get("Retry-After"))
    return cls(_redact(message, secret), **kwargs)


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, but is {value!r}")


def _check_number(
    name: str, value: object, *, low: float, low_open: bool, high: float = math.inf
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        assert isinstance(value, (int, float))
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        if high == math.inf:
            bound = f"{'>' if low_open else '>='} {low:g}"
        else:
            bound = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
        raise ValueError(f"`{name}` must be a finite number {bound}, but is {value!r}")


def _check_tier(name: str, tier: object) -> None:
    if tier is not None and (not isinstance(tier, str) or not tier.strip()):
        raise ValueError(f"`{name}` must be a tier name or None, but is {tier!r}")


class BaseAimClient:
    """Configuration and the I/O-free half of every call; see `AimClient` for the arguments."""

    def __init__(
        self,
        base_url: str | httpx.URL,
        *,
        api_key: str | None,
        tier: str | None,
        timeout: float | httpx.Timeout | None,
        max_retries: int,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(
                f"`base_url` must be an http:// or https:// URL, such as "
                f"'http://127.0.0.1:8000', but is {str(base_url)!r}"
            )
        if api_key is None:
            api_key = os.environ.get(API_KEY_ENV) or None
        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
            raise ValueError("`api_key` must be a non-empty string or None")
        _check_tier("tier", tier)
        _check_int("max_retries", max_retries, minimum=0)
        if not isinstance(timeout, httpx.Timeout) and timeout is not None:
            _check_number("timeout", timeout, low=0.0, low_open=True)
        self._base_url = url
        self._api_key = _Secret(api_key) if api_key is not None else None
        self._tier = tier
        self._timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._max_retries = max_retries
        # Seams for tests: jitter comes from here (the twins hold the matching `_sleep`).
        self._random: Callable[[], float] = random.random

    @property
    def base_url(self) -> httpx.URL:
        return self._base_url

    @property
    def tier(self) -> str | None:
        """The tier asked for when a call names none (None: the key's own tier)."""
        return self._tier

    @property
    def timeout(self) -> httpx.Timeout:
        return self._timeout

    @property
    def max_retries(self) -> int:
        return self._max_retries

    def __repr__(self) -> str:
        key = "'***'" if self._api_key is not None else "None"
        return (
            f"{type(self).__name__}(base_url={str(self._base_url)!r}, api_key={key}, "
            f"tier={self._tier!r})"
        )

    # --- requests ------------------------------------------------------------------------------

    def _headers(self, *, tier: str | None, accept: str = JSON) -> dict[str, str]:
        headers = {"Accept": accept}
        if self._api_key is not None:
            headers["X-API-Key"] = self._api_key.get()
        tier = tier if tier is not None else self._tier
        if tier is not None:
            headers["X-AIM-Tier"] = tier
        return headers

    def _request_kwargs(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        tier: str | None = None,
        accept: str = JSON,
    ) -> dict[str, Any]:
        """Arguments for `httpx.Client.build_request`, the same for both twins."""
        headers = self._headers(tier=tier, accept=accept)
        if body is not None:
            headers["Content-Type"] = JSON
        return {"method": method, "url": path, "headers": headers, "content": body}

    @staticmethod
    def _encode_body(body: Mapping[str, Any]) -> bytes:
        # Serialised once so that retries resend identical bytes; NaN is refused, as JSON has none.
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()

    def _predict_body(
        self,
        inputs: Inputs,
        *,
        focus: FocusArg | None,
        top_k: int | None,
        tier: str | None,
    ) -> bytes:
        _check_tier("tier", tier)
        body: dict[str, Any] = {"inputs": encode_inputs(inputs)}
        if top_k is not None:
            _check_int("top_k", top_k, minimum=1)
            body["top_k"] = top_k
        encoded_focus = encode_focus(focus)
        if encoded_focus is not None:
            body["focus"] = encoded_focus
        return self._encode_body(body)

    def _generate_body(
        self,
        prompt: str,
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        focus: FocusArg | None,
        tier: str | None,
        stream: bool,
    ) -> bytes:
        if not isinstance(prompt, str):
            raise TypeError(f"`prompt` must be a string, but is {type(prompt).__name__}")
        _check_tier("tier", tier)
        _check_int("max_new_tokens", max_new_tokens, minimum=1)
        _check_number("temperature", temperature, low=0.0, low_open=False)
        _check_number("top_p", top_p, low=0.0, low_open=True, high=1.0)
        body: dict[str, Any] = {
            "prompt": prompt,
            "max_new_tokens": max_new_tokens,
            "temperature": float(temperature),
            "top_p": float(top_p),
        }
        encoded_focus = encode_focus(focus)
        if encoded_focus is not None:
            body["focus"] = encoded_focus
        body["stream"] = stream
        return self._encode_body(body)

    # --- retry policy --------------------------------------------------------------------------

    def _retry_delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retrying after failed attempt `attempt` (0-based), or None."""
        if attempt >= self._max_retries:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= MAX_RETRY_AFTER else None
        backoff = min(MAX_BACKOFF, INITIAL_BACKOFF * 2.0**attempt)
        # Jitter spreads out the retries of clients that failed together.
        return backoff * (0.5 + 0.5 * self._random())

    def _delay_after_response(self, response: httpx.Response, attempt: int) -> float | None:
        if response.status_code not in RETRY_STATUSES:
            return None
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return self._retry_delay(attempt, retry_after)

    def _delay_after_transport_error(self, exc: httpx.RequestError, attempt: int) -> float | None:
        # Only failures to connect are known to have left the request unsent; a read that timed
        # out may have reached a busy server, and resending would add to its load.
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return self._retry_delay(attempt, None)
        return None

    def _log_retry(self, request: httpx.Request, reason: str, delay: float, attempt: int) -> None:
        # Method and path only: headers (the API key) and bodies (user data) stay out of logs.
        logger.info(
            "aim_client: %s %s failed (%s); retry %d of %d in %.2fs",
            request.method,
            request.url.path,
            reason,
            attempt + 1,
            self._max_retries,
            delay,
        )

    # --- responses and errors ------------------------------------------------------------------

    def _api_error(self, response: httpx.Response) -> APIError:
        return api_error_from_response(response, self._api_key)

    def _transport_error(self, exc: httpx.RequestError, request: httpx.Request) -> AimError:
        where = f"{request.method} {request.url}"
        detail = _redact(str(exc), self._api_key) or "no detail"
        kind = type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            return _errors.TimeoutError(f"{where} timed out ({kind}: {detail})")
        if isinstance(exc, httpx.DecodingError):
            return InvalidResponseError(f"{where}: the answer could not be decoded ({detail})")
        return _errors.ConnectionError(f"{where} failed ({kind}: {detail})")

    @staticmethod
    def _json(response: httpx.Response) -> object:
        try:
            return response.json()
        except ValueError:
            raise InvalidResponseError(
                f"{response.request.method} {response.request.url.path} answered "
                f"{response.status_code} with a body that is not JSON: {response.text[:80]!r}"
            ) from None

    @staticmethod
    def _request_id(response: httpx.Response) -> str | None:
        value: str | None = response.headers.get("X-Request-ID")
        return value

    @staticmethod
    def _is_event_stream(response: httpx.Response) -> bool:
        content_type: str = response.headers.get("Content-Type", "")
        return content_type.startswith(EVENT_STREAM)
