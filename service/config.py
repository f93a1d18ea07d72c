"""The service config file: which model to serve and the tiers it is sold at.

Pydantic models; every refusal names its field (``tiers.bronze.utility: 1.5 has to be in (0,
1]``) through the translation in ``validation.py`` that the HTTP 422s use too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .access.quotas import Quota
from .validation import FieldError, config_error

DEFAULT_TIERS: dict[str, dict[str, Any]] = {
    "gold": {"utility": 1.0},
    "silver": {"utility": 0.85},
    "bronze": {"utility": 0.6},
}
_TIER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*")


class ConfigError(FieldError):
    """The config file is invalid; the message names the field."""


class RateLimit(BaseModel):
    """A token bucket: `rate` requests per second, bursts up to `burst`."""

    model_config = ConfigDict(frozen=True)

    rate: float
    burst: float

    @classmethod
    def from_text(cls, text: str) -> RateLimit:
        """'50/s', '600/m', '1000/h'; ValueError (without a field) otherwise."""
        m = _RATE.fullmatch(text)
        if m is None:
            raise ValueError(f"{text!r} is not a rate like '50/s' or '600/m'")
        count = float(m.group(1))
        per = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}.get(
            m.group(2), 3600
        )
        if count <= 0:
            raise ValueError(f"{text!r} has to allow at least one request")
        # A burst of one second's worth (at least 1) keeps short spikes from being refused.
        return cls(rate=count / per, burst=max(1.0, count / per))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(float(value))


# Per tier field: what it accepts, and the rule a refusal states.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "utility": (lambda v: _finite(v) and 0 < float(v) <= 1, "has to be in (0, 1]"),
    "sigma": (lambda v: _finite(v) and float(v) >= 0, "has to be a finite number >= 0"),
    "focus": (lambda v: isinstance(v, bool), "has to be true or false"),
    "max_items": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "has to be an integer >= 1",
    ),
}


class TierConfig(BaseModel):
    """One tier as configured: a target utility or a raw σ, and its limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    utility: float | None = None
    """Target agreement in (0, 1]: the share of decisions that match the full model."""
    sigma: float | None = None
    """Raw σ ≥ 0, instead of a utility."""
    rate_limit: RateLimit | None = None
    """Requests per second, minute or hour per account, e.g. '50/s'."""
    focus: bool = True
    """Whether this tier's callers may use focus modulation."""
    max_items: int | None = None
    """Most inputs in one request (the server-wide `max_items` still caps it)."""
    quota: Quota | None = None
    """Items (inputs, or generated tokens) per account per UTC hour, day or month, e.g.
    '10000/day'; past it, 429 `quota_exceeded`."""

    @field_validator("utility", "sigma", "focus", "max_items", mode="before")
    @classmethod
    def _check(cls, value: Any, info: ValidationInfo) -> Any:
        accepts, rule = _RULES[str(info.field_name)]
        if value is not None and not accepts(value):
            raise ValueError(f"{value!r} {rule}")
        return value

    @field_validator("rate_limit", mode="before")
    @classmethod
    def _rate_limit(cls, value: Any) -> Any:
        if value is None or isinstance(value, RateLimit):
            return value
        if not isinstance(value, str):
            raise ValueError(f"{value!r} has to be a string like '50/s'")
        return RateLimit.from_text(value)

    @field_validator("quota", mode="before")
    @classmethod
    def _quota(cls, value: Any) -> Any:
        if value is None or isinstance(value, Quota):
            return value
        return Quota.from_text(value)

    @model_validator(mode="after")
    def _one_target(self) -> TierConfig:
        if (self.utility is None) == (self.sigma is None):
            raise ConfigError(f"tiers.{self.name}: give exactly one of `utility` or `sigma`")
        return self

    @classmethod
    def parse(cls, name: str, raw: Any) -> TierConfig:
        """One entry of the config's `tiers` mapping; ConfigError names the field."""
        where = f"tiers.{name}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: has to be a mapping like {{utility: 0.85}}")
        if "name" in raw:  # the mapping's key names the tier
            raise ConfigError(f"{where}.name: unknown field")
        try:
            return cls.model_validate({"name": name, **raw})
        except ValidationError as exc:
            raise config_error(exc, where, ConfigError) from None


def _default_tiers() -> tuple[TierConfig, ...]:
    return tuple(TierConfig.parse(n, r) for n, r in DEFAULT_TIERS.items())


class ServiceConfig(BaseModel):
    """The parsed config file. Tiers are ordered from highest to lowest."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    model: str | dict[str, Any] = "digits"
    """A shipped model's name, or a model spec mapping (see ``models/spec.py``)."""
    tiers: tuple[TierConfig, ...] = Field(default_factory=_default_tiers)
    base_dir: Path = Path(".")
    """The config file's folder: relative paths in the model spec resolve against it."""

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, value: Any) -> Any:
        if not isinstance(value, str | dict):
            raise ValueError(f"{value!r} has to be a model name or a model spec mapping")
        return value

    @field_validator("tiers", mode="before")
    @classmethod
    def _tiers(cls, value: Any) -> Any:
        """The file's mapping of tier name to settings, in order; tuples pass as they are."""
        if isinstance(value, tuple):
            return value
        if not isinstance(value, dict) or not value:
            raise ValueError("has to be a non-empty mapping of tier name to settings")
        for name in value:
            if not isinstance(name, str) or not _TIER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid tier name ([A-Za-z0-9_.-])")
        return tuple(TierConfig.parse(n, r) for n, r in value.items())

    @classmethod
    def from_dict(cls, raw: Any, base_dir: Path = Path(".")) -> ServiceConfig:
        if not isinstance(raw, dict):
            raise ConfigError("config: has to be a mapping with `model` and `tiers`")
        unknown = set(raw) - {"model", "tiers"}
        if unknown:
            raise ConfigError(f"config: unknown field(s) {sorted(unknown)}")
        try:
            return cls.model_validate({**raw, "base_dir": base_dir})
        except ValidationError as exc:
            raise config_error(exc, "", ConfigError) from None

    @classmethod
    def load(cls, path: Path) -> ServiceConfig:
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
        return cls.from_dict(raw, base_dir=path.parent)
