"""Typed results, the `Focus` request parameter, and the parsers that build results from JSON.

Parsers read the fields the HTTP contract names and ignore any others, so a newer server that adds
fields does not break an older client. A missing or mistyped contract field raises
`InvalidResponseError` naming it.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from ._errors import InvalidResponseError

__all__ = [
    "Direction",
    "Focus",
    "GenerationResult",
    "ModelInfo",
    "PredictResult",
    "Prediction",
    "SegmentationPrediction",
    "StreamEvent",
    "TopK",
    "parse_generation_result",
    "parse_model_info",
    "parse_predict_result",
    "parse_stream_event",
]

Direction = Literal["up", "down"]


@dataclass(frozen=True)
class Focus:
    """One focus-modulation request: make the model see more ("up") or less ("down") of a target.

    Name exactly one target: `cls`, a class label as listed by `ModelInfo.labels` (a str), a
    class index (an int), or "all" for every class; or `token`, a token (text or id) for
    generation models. Arguments are checked here, and errors name the field and the bad value.
    """

    cls: str | int | None = None
    """The class to focus on (classification, segmentation): a label, or an index."""
    direction: Direction = "up"
    """"up" adds to the class's logit, "down" subtracts from it."""
    strength: float = 1.0
    """The focus strength λ in logit units (>= 0); the shift per decision is λ·|η|, η ~ N(0, 1)."""
    region: tuple[int, int, int, int] | None = None
    """Segmentation only: the pixel box `(x0, y0, x1, y1)`, half-open, where focus applies."""
    token: str | int | None = None
    """The token to focus on (generation), as text or id, instead of `cls`."""

    def __post_init__(self) -> None:
        if (self.cls is None) == (self.token is None):
            raise ValueError(
                "Focus needs exactly one of `cls` (a class) or `token` (a generation token), "
                f"but got cls={self.cls!r}, token={self.token!r}"
            )
        for name in ("cls", "token"):
            value = getattr(self, name)
            if value is None or isinstance(value, str):
                continue
            try:  # ints, numpy integers
                if isinstance(value, bool):
                    raise TypeError
                object.__setattr__(self, name, operator.index(value))
            except TypeError:
                raise TypeError(f"`{name}` must be a str or an int, but is {value!r}") from None
        if self.direction not in ("up", "down"):
            raise ValueError(f"`direction` must be 'up' or 'down', but is {self.direction!r}")
        strength = self.strength
        if (
            isinstance(strength, bool)
            or not isinstance(strength, numbers.Real)
            or not math.isfinite(strength)
            or strength < 0
        ):
            raise ValueError(f"`strength` must be a finite number >= 0, but is {strength!r}")
        object.__setattr__(self, "strength", float(strength))
        if self.region is not None:
            try:
                region = tuple(self.region)
                if len(region) != 4 or any(isinstance(v, bool) for v in region):
                    raise TypeError
                coords = tuple(operator.index(v) for v in region)
            except TypeError:
                raise ValueError(
                    "`region` must be four integer pixel coordinates (x0, y0, x1, y1), but is "
                    f"{self.region!r}"
                ) from None
            object.__setattr__(self, "region", coords)

    def to_json(self) -> dict[str, Any]:
        """The focus entry as the server's JSON body expects it."""
        out: dict[str, Any] = {}
        if self.cls is not None:
            out["class"] = self.cls
        if self.token is not None:
            out["token"] = self.token
        out["direction"] = self.direction
        out["strength"] = self.strength
        if self.region is not None:
            out["region"] = list(self.region)
        return out


@dataclass(frozen=True)
class TopK:
    """One of the k best classes of a classification."""

    label: str
    index: int
    score: float


@dataclass(frozen=True)
class Prediction:
    """The classification of one input: the winning class and the k best."""

    label: str
    index: int
    score: float
    top_k: tuple[TopK, ...] = ()


@dataclass(frozen=True)
class SegmentationPrediction:
    """The segmentation of one input: a class index per pixel and the pixel count per class."""

    mask: tuple[tuple[int, ...], ...]
    """Rows of class indices; `numpy.asarray(mask)` gives an (H, W) array."""
    counts: Mapping[str, int] = field(default_factory=dict, hash=False)
    """Pixels per class label; classes absent from the mask may be left out."""


@dataclass(frozen=True)
class PredictResult:
    """The answer to `predict`: one prediction per input, in input order."""

    model: str
    tier: str
    task: str
    """"classification" (predictions are `Prediction`) or "segmentation"
    (`SegmentationPrediction`)."""
    predictions: tuple[Prediction | SegmentationPrediction, ...]
    request_id: str | None = field(default=None, compare=False)
    """The server's `X-Request-ID`, for matching a call with the server's logs."""

    def __len__(self) -> int:
        return len(self.predictions)

    def __iter__(self) -> Iterator[Prediction | SegmentationPrediction]:
        return iter(self.predictions)

    def __getitem__(self, index: int) -> Prediction | SegmentationPrediction:
        return self.predictions[index]


@dataclass(frozen=True)
class ModelInfo:
    """What `GET /model` says about the served model and the tiers this key may use."""

    name: str
    task: str
    labels: tuple[str, ...]
    input: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """The input spec (shape, value range, accepted encodings), as the server states it."""
    tiers: tuple[str, ...] = ()
    """The tiers this key may ask for, highest first."""
    tier: str | None = None
    """The tier a request gets when it names none."""


@dataclass(frozen=True)
class GenerationResult:
    """The answer to `generate`."""

    model: str
    tier: str
    text: str
    tokens: tuple[int, ...]
    finish_reason: str | None
    """"length" (hit `max_new_tokens`) or "stop" (the model ended the text)."""
    task: str = "generation"
    request_id: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class StreamEvent:
    """One server-sent event of a generation stream.

    Token events carry `token` and the text `text` of that token; the final event carries
    `finish_reason` and the full generated text in `text`.
    """

    text: str
    token: int | None = None
    finish_reason: str | None = None

    @property
    def is_final(self) -> bool:
        """Whether this is the last event, the one that carries `finish_reason`."""
        return self.finish_reason is not None


# --- parsing -----------------------------------------------------------------------------------

_T = TypeVar("_T")


def _fail(where: str, expected: str, value: object) -> InvalidResponseError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return InvalidResponseError(f"response field `{where}` should be {expected}, but is {shown}")


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, "an object", value)
    return value


def _optional(obj: Mapping[str, Any], key: str, kind: type[_T], where: str) -> _T | None:
    """`obj[key]` checked to be of `kind`, or None when it is absent or null."""
    value = obj.get(key)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # type: ignore[return-value]  # JSON writes 1.0 as 1
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _fail(f"{where}{key}", f"of type {kind.__name__}", value)
    return value


def _get(obj: Mapping[str, Any], key: str, kind: type[_T], where: str) -> _T:
    """`obj[key]` checked to be of `kind`; it must be present."""
    value = _optional(obj, key, kind, where)
    if value is None:
        raise InvalidResponseError(f"response field `{where}{key}` is missing")
    return value


def _label(obj: Mapping[str, Any], where: str) -> str:
    # Labels are strings in the contract; a server answering bare indices is read the same way.
    value = obj.get("label")
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    raise _fail(f"{where}label", "a string", value)


def _parse_top_k(value: object, where: str) -> TopK:
    obj = _object(value, where)
    return TopK(
        label=_label(obj, f"{where}."),
        index=_get(obj, "index", int, f"{where}."),
        score=_get(obj, "score", float, f"{where}."),
    )


def _parse_classification(value: object, where: str) -> Prediction:
    obj = _object(value, where)
    top_k = _optional(obj, "top_k", list, f"{where}.") or []
    return Prediction(
        label=_label(obj, f"{where}."),
        index=_get(obj, "index", int, f"{where}."),
        score=_get(obj, "score", float, f"{where}."),
        top_k=tuple(_parse_top_k(item, f"{where}.top_k[{i}]") for i, item in enumerate(top_k)),
    )


def _parse_segmentation(value: object, where: str) -> SegmentationPrediction:
    obj = _object(value, where)
    mask = _get(obj, "mask", list, f"{where}.")
    try:
        rows = tuple(tuple(int(v) for v in row) for row in mask)
    except (TypeError, ValueError):
        raise _fail(f"{where}.mask", "rows of class indices", mask) from None
    counts = _optional(obj, "counts", dict, f"{where}.") or {}
    try:
        parsed_counts = {str(k): int(v) for k, v in counts.items()}
    except (TypeError, ValueError):
        raise _fail(f"{where}.counts", "pixel counts by label", counts) from None
    return SegmentationPrediction(mask=rows, counts=parsed_counts)


def parse_predict_result(payload: object, *, request_id: str | None = None) -> PredictResult:
    """Build a `PredictResult` from the JSON answer of `POST /predict`."""
    obj = _object(payload, "(body)")
    predictions = _get(obj, "predictions", list, "")
    task = _optional(obj, "task", str, "")
    if task is None:  # infer it when an older server leaves it out
        first = predictions[0] if predictions else {}
        task = (
            "segmentation" if isinstance(first, Mapping) and "mask" in first else "classification"
        )
    parse = _parse_segmentation if task == "segmentation" else _parse_classification
    return PredictResult(
        model=_get(obj, "model", str, ""),
        tier=_get(obj, "tier", str, ""),
        task=task,
        predictions=tuple(parse(p, f"predictions[{i}]") for i, p in enumerate(predictions)),
        request_id=request_id,
    )


def parse_model_info(payload: object) -> ModelInfo:
    """Build a `ModelInfo` from the JSON answer of `GET /model`."""
    obj = _object(payload, "(body)")
    labels = _optional(obj, "labels", list, "") or []
    tiers = _optional(obj, "tiers", list, "") or []
    return ModelInfo(
        name=_get(obj, "name", str, ""),
        task=_get(obj, "task", str, ""),
        labels=tuple(str(label) for label in labels),
        input=dict(_optional(obj, "input", dict, "") or {}),
        tiers=tuple(str(tier) for tier in tiers),
        tier=_optional(obj, "tier", str, ""),
    )


def _token_ids(value: list[Any], where: str) -> tuple[int, ...]:
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise _fail(where, "a list of token ids", value)
    return tuple(value)


def parse_generation_result(payload: object, *, request_id: str | None = None) -> GenerationResult:
    """Build a `GenerationResult` from the JSON answer of a generation request."""
    obj = _object(payload, "(body)")
    return GenerationResult(
        model=_get(obj, "model", str, ""),
        tier=_get(obj, "tier", str, ""),
        text=_get(obj, "text", str, ""),
        tokens=_token_ids(_optional(obj, "tokens", list, "") or [], "tokens"),
        finish_reason=_optional(obj, "finish_reason", str, ""),
        task=_optional(obj, "task", str, "") or "generation",
        request_id=request_id,
    )


def parse_stream_event(payload: object) -> StreamEvent:
    """Build a `StreamEvent` from the JSON data of one server-sent event."""
    obj = _object(payload, "(event)")
    return StreamEvent(
        text=_optional(obj, "text", str, "") or "",
        token=_optional(obj, "token", int, ""),
        finish_reason=_optional(obj, "finish_reason", str, ""),
    )
