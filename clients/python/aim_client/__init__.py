"""Python client for AIM serving: one model served at several utility tiers.

Example::

    from aim_client import AimClient

    with AimClient("http://127.0.0.1:8000", api_key="...") as client:
        result = client.predict([[[0] * 8] * 8])
        print(result[0].label)
"""

from ._base import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from ._client import AimClient, AsyncAimClient
from ._errors import (
    AimError,
    APIError,
    AuthenticationError,
    BadRequestError,
    ConnectionError,
    InvalidResponseError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    TimeoutError,
)
from ._inputs import FocusArg, Inputs, SupportsToList
from ._streaming import AsyncStream, Stream
from ._types import (
    Direction,
    Focus,
    GenerationResult,
    ModelInfo,
    Prediction,
    PredictResult,
    SegmentationPrediction,
    StreamEvent,
    TopK,
)
from ._version import __version__

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "APIError",
    "AimClient",
    "AimError",
    "AsyncAimClient",
    "AsyncStream",
    "AuthenticationError",
    "BadRequestError",
    "ConnectionError",
    "Direction",
    "Focus",
    "FocusArg",
    "GenerationResult",
    "Inputs",
    "InvalidResponseError",
    "ModelInfo",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PredictResult",
    "Prediction",
    "RateLimitError",
    "SegmentationPrediction",
    "ServerError",
    "ServiceUnavailableError",
    "Stream",
    "StreamEvent",
    "SupportsToList",
    "TimeoutError",
    "TopK",
    "__version__",
]
