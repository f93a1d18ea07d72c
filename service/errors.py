"""Domain errors of the service, turned into HTTP answers at the edge (`api/errors.py`).

ServiceError
├── BadRequest          400  a request that contradicts itself (two different keys)
├── Unauthorized        401  no key, or a key we do not know
├── Forbidden           403  a tier above the key's, or a feature the tier does not include
├── PayloadTooLarge     413  body or item count over the limit
├── UnsupportedMedia    415  a body that is not JSON
├── InvalidInput        422  bad input; names the field
├── RateLimited         429  the tier's rate limit; carries Retry-After
├── QuotaExceeded       429  the account's quota at the tier is used up; Retry-After: window end
└── Unavailable         503  queue full, shutting down or not ready; answered at once
    └── QuotaUnavailable 503  the quota cannot be checked (shared state unreachable)
"""

from __future__ import annotations


class ServiceError(Exception):
    """An error with an HTTP status, a stable code and a message safe to show a client."""

    status = 500
    code = "internal_error"

    def __init__(
        self, message: str, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers or {}


class BadRequest(ServiceError):
    """A request that contradicts itself, such as two headers carrying different keys."""

    status = 400
    code = "bad_request"


class Unauthorized(ServiceError):
    """No API key, or an unknown one."""

    status = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    """The key may not use this tier or feature."""

    status = 403
    code = "forbidden"


class PayloadTooLarge(ServiceError):
    """The request is over a size limit."""

    status = 413
    code = "payload_too_large"


class UnsupportedMedia(ServiceError):
    """The body is not `application/json`."""

    status = 415
    code = "unsupported_media_type"


class InvalidInput(ServiceError):
    """The request is malformed; `field` names the culprit."""

    status = 422
    code = "invalid_input"


class RateLimited(ServiceError):
    """The key's tier rate limit is exhausted for now."""

    status = 429
    code = "rate_limited"


class QuotaExceeded(ServiceError):
    """The account has used its quota at this tier for the current window."""

    status = 429
    code = "quota_exceeded"


class Unavailable(ServiceError):
    """The service cannot take the request now (queue full, not ready, shutting down)."""

    status = 503
    code = "unavailable"


class QuotaUnavailable(Unavailable):
    """The quota cannot be checked (shared state unreachable): refused rather than unmetered."""

    code = "quota_unavailable"
