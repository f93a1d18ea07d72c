"""What a vision model accepts: ``InputSpec`` (the model spec's ``input:`` mapping), a pydantic
model whose refusals name the field (``model.input.shape: ...``), and the preprocessing it
implies."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..validation import config_error
from .errors import describe_value

MAX_INPUT_SIDE = 4096


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{describe_value(value)} is not a number")
    if not math.isfinite(float(value)):
        raise ValueError(f"{value!r} is not a finite number")
    return float(value)


class InputSpec(BaseModel):
    """What a model accepts: ``shape`` C×H×W, raw values in [low, high].

    The network receives ``(raw / scale - mean) / std`` (mean/std per channel, if given).
    Images are mapped linearly from pixel 0..255 to [low, high] first. Defaults: low 0, high 1,
    scale = high when low is 0 (so raw / scale is in [0, 1]), else 1; no mean/std. Only one of
    mean/std given means std 1 or mean 0.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    shape: tuple[int, int, int]
    low: float = 0.0
    high: float = 1.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float = 1.0

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise ValueError("expected a mapping with shape, low, high, mean, std, scale")
        data = dict(data)
        low, high = data.get("low", 0.0), data.get("high", 1.0)
        if "scale" not in data and isinstance(high, int | float) and not isinstance(high, bool):
            data["scale"] = high if low == 0 else 1.0
        if data.get("mean") is not None and data.get("std") is None:
            data["std"] = 1.0
        if data.get("std") is not None and data.get("mean") is None:
            data["mean"] = 0.0
        return data

    @field_validator("shape", mode="before")
    @classmethod
    def _shape(cls, shape: Any) -> Any:
        if (
            not isinstance(shape, Sequence)
            or isinstance(shape, str)
            or len(shape) != 3
            or any(isinstance(s, bool) or not isinstance(s, int) for s in shape)
            or any(not 0 < s <= MAX_INPUT_SIDE for s in shape)
        ):
            raise ValueError(
                f"{describe_value(shape)} is not [channels, height, width] "
                f"(positive integers up to {MAX_INPUT_SIDE})"
            )
        return tuple(shape)

    @field_validator("low", "scale", mode="before")
    @classmethod
    def _finite(cls, value: Any, info: ValidationInfo) -> float:
        number = _number(value)
        if info.field_name == "scale" and number <= 0:
            raise ValueError(f"{number:g} is not positive")
        return number

    @field_validator("high", mode="before")
    @classmethod
    def _high(cls, value: Any, info: ValidationInfo) -> float:
        high = _number(value)
        low = info.data.get("low")
        if low is not None and not low < high:
            raise ValueError(f"{high:g} is not above low ({low:g})")
        return high

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _per_channel(cls, value: Any, info: ValidationInfo) -> tuple[float, ...] | None:
        shape = info.data.get("shape")
        if value is None or shape is None:
            return value
        channels = shape[0]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values = (_number(value),) * channels
        elif not isinstance(value, Sequence) or isinstance(value, str):
            raise ValueError(f"{describe_value(value)} is not a number or a list of numbers")
        elif len(value) != channels:
            raise ValueError(f"has {len(value)} values, expected one per channel ({channels})")
        else:
            values = tuple(_number(v) for v in value)
        if info.field_name == "std" and any(s <= 0 for s in values):
            raise ValueError(f"{list(values)} has to be positive")
        return values

    @classmethod
    def from_dict(cls, data: Any, field: str = "input") -> InputSpec:
        """Parse a config mapping; ValueError names the field, e.g. "model.input.shape: ..."."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise config_error(exc, field) from None

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def accepted_shapes(self) -> tuple[tuple[int, ...], ...]:
        """C×H×W, and H×W for one channel (a grayscale image sent as rows of numbers)."""
        if self.channels == 1:
            return (self.shape, self.shape[1:])
        return (self.shape,)

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "low": self.low,
            "high": self.high,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "scale": self.scale,
        }

    def normalize(self, raw: np.ndarray) -> torch.Tensor:
        """Raw values (…×C×H×W, already checked) → the float32 CPU tensor the network takes."""
        return torch.from_numpy(self.normalize_array(raw))

    def normalize_array(self, raw: np.ndarray) -> np.ndarray:
        """`normalize` as a contiguous float32 array: what the event loop uses, since a torch
        call there may give up the GIL to the forward thread and wait to get it back."""
        x = np.asarray(raw, dtype=np.float32) / np.float32(self.scale)
        if self.mean is not None and self.std is not None:
            mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
            std = np.asarray(self.std, dtype=np.float32)[:, None, None]
            x = (x - mean) / std
        return np.ascontiguousarray(x, dtype=np.float32)
