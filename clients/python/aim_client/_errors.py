"""Exceptions raised by the AIM client.

The hierarchy::

    AimError
    ├── APIError                        the server answered with an error status
    │   ├── AuthenticationError         401: no key, or an unknown key
    │   ├── PermissionDeniedError       403: a tier above the key's
    │   ├── PayloadTooLargeError        413
    │   ├── BadRequestError             422 and any other 4xx; `.field` names the bad input
    │   ├── RateLimitError              429; `.retry_after`
    │   └── ServerError                 5xx
    │       └── ServiceUnavailableError 503: queue full or not ready; `.retry_after`
    ├── TimeoutError                    no answer in time
    ├── ConnectionError                 the server could not be reached or dropped the connection
    └── InvalidResponseError            the answer does not follow the HTTP contract

`TimeoutError` and `ConnectionError` deliberately reuse the builtin names inside this package;
reach them as `aim_client.TimeoutError` and `aim_client.ConnectionError`. Neither inherits from
the builtin, so `except AimError` catches everything this client raises on its own account.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIError",
    "AimError",
    "AuthenticationError",
    "BadRequestError",
    "ConnectionError",
    "InvalidResponseError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "ServiceUnavailableError",
    "TimeoutError",
]


class AimError(Exception):
    """Base class of every error this client raises."""


class APIError(AimError):
    """The server answered with an error status."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        field: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.field = field
        self.request_id = request_id

    def _details(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "code": self.code,
            "field": self.field,
            "request_id": self.request_id,
        }

    def __str__(self) -> str:
        text = f"{self.status} {self.code}: {self.message}"
        if self.field:
            text += f" (field: {self.field})"
        if self.request_id:
            text += f" [request id {self.request_id}]"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status}, code={self.code!r})"

    # Keyword-only constructor arguments do not survive the default exception pickling, which
    # matters when errors cross process boundaries (multiprocessing, concurrent.futures).
    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_api_error, (type(self), self.message, self._details()))


def _rebuild_api_error(cls: type[APIError], message: str, details: dict[str, Any]) -> APIError:
    return cls(message, **details)


class AuthenticationError(APIError):
    """401: the request carried no API key, or one the server does not know."""


class PermissionDeniedError(APIError):
    """403: the requested tier is above the one the API key may use."""


class PayloadTooLargeError(APIError):
    """413: the request body is larger than the server accepts."""


class BadRequestError(APIError):
    """422 or another 4xx: the request was invalid; `.field` names the offending input."""


class _RetryAfterError(APIError):
    """An error whose response may say, in seconds, when to try again."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        field: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, field=field, request_id=request_id)
        self.retry_after = retry_after

    def _details(self) -> dict[str, Any]:
        return {**super()._details(), "retry_after": self.retry_after}

    def __str__(self) -> str:
        text = super().__str__()
        if self.retry_after is not None:
            text += f" (retry after {self.retry_after:g}s)"
        return text


class RateLimitError(_RetryAfterError):
    """429: the tier's rate limit was hit; `.retry_after` is the server's advice in seconds."""


class ServerError(APIError):
    """5xx: the server failed to answer the request."""


class ServiceUnavailableError(_RetryAfterError, ServerError):
    """503: the server's queue is full or it is not ready; `.retry_after` may say when to retry."""


class TimeoutError(AimError):
    """The server did not answer within the client's timeout."""


class ConnectionError(AimError):
    """The server could not be reached, or the connection broke before the answer was complete."""


class InvalidResponseError(AimError):
    """The server's answer does not follow the HTTP contract (not JSON, or missing fields)."""
