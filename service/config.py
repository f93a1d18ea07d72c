"""The service config file: which model to serve and the tiers it is sold at."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_TIERS: dict[str, dict[str, Any]] = {
    "gold": {"utility": 1.0},
    "silver": {"utility": 0.85},
    "bronze": {"utility": 0.6},
}


class ConfigError(ValueError):
    """The config file is invalid; the message names the field."""


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `rate` requests per second, bursts up to `burst`."""

    rate: float
    burst: float

    @classmethod
    def parse(cls, text: str, field_name: str) -> RateLimit:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*", text)
        if m is None:
            raise ConfigError(f"{field_name}: {text!r} is not a rate like '50/s' or '600/m'")
        count = float(m.group(1))
        per = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}.get(
            m.group(2), 3600
        )
        if count <= 0:
            raise ConfigError(f"{field_name}: {text!r} has to allow at least one request")
        # A burst of one second's worth (at least 1) keeps short spikes from being refused.
        return cls(rate=count / per, burst=max(1.0, count / per))


@dataclass(frozen=True)
class TierConfig:
    """One tier as configured: a target utility or a raw σ, and its limits."""

    name: str
    utility: float | None = None
    sigma: float | None = None
    rate_limit: RateLimit | None = None
    focus: bool = True
    max_items: int | None = None

    @classmethod
    def parse(cls, name: str, raw: Any) -> TierConfig:
        where = f"tiers.{name}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: has to be a mapping like {{utility: 0.85}}")
        unknown = set(raw) - {"utility", "sigma", "rate_limit", "focus", "max_items"}
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
        utility, sigma = raw.get("utility"), raw.get("sigma")
        if (utility is None) == (sigma is None):
            raise ConfigError(f"{where}: give exactly one of `utility` or `sigma`")
        if utility is not None and not (
            _is_number(utility) and 0 < float(utility) <= 1 and math.isfinite(float(utility))
        ):
            raise ConfigError(f"{where}.utility: {utility!r} has to be in (0, 1]")
        if sigma is not None and not (
            _is_number(sigma) and float(sigma) >= 0 and math.isfinite(float(sigma))
        ):
            raise ConfigError(f"{where}.sigma: {sigma!r} has to be a finite number >= 0")
        rate = raw.get("rate_limit")
        if rate is not None and not isinstance(rate, str):
            raise ConfigError(f"{where}.rate_limit: {rate!r} has to be a string like '50/s'")
        focus = raw.get("focus", True)
        if not isinstance(focus, bool):
            raise ConfigError(f"{where}.focus: {focus!r} has to be true or false")
        max_items = raw.get("max_items")
        if max_items is not None and not (
            isinstance(max_items, int) and not isinstance(max_items, bool) and max_items >= 1
        ):
            raise ConfigError(f"{where}.max_items: {max_items!r} has to be an integer >= 1")
        return cls(
            name=name,
            utility=None if utility is None else float(utility),
            sigma=None if sigma is None else float(sigma),
            rate_limit=None if rate is None else RateLimit.parse(rate, f"{where}.rate_limit"),
            focus=focus,
            max_items=max_items,
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class ServiceConfig:
    """The parsed config file. Tiers are ordered from highest to lowest."""

    model: str | dict[str, Any] = "digits"
    tiers: tuple[TierConfig, ...] = field(
        default_factory=lambda: tuple(TierConfig.parse(n, r) for n, r in DEFAULT_TIERS.items())
    )
    base_dir: Path = Path(".")

    @classmethod
    def from_dict(cls, raw: Any, base_dir: Path = Path(".")) -> ServiceConfig:
        if not isinstance(raw, dict):
            raise ConfigError("config: has to be a mapping with `model` and `tiers`")
        unknown = set(raw) - {"model", "tiers"}
        if unknown:
            raise ConfigError(f"config: unknown field(s) {sorted(unknown)}")
        model = raw.get("model", "digits")
        if not isinstance(model, str | dict):
            raise ConfigError(f"model: {model!r} has to be a model name or a model spec mapping")
        tiers_raw = raw.get("tiers", DEFAULT_TIERS)
        if not isinstance(tiers_raw, dict) or not tiers_raw:
            raise ConfigError("tiers: has to be a non-empty mapping of tier name to settings")
        for name in tiers_raw:
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", name):
                raise ConfigError(f"tiers: {name!r} is not a valid tier name ([A-Za-z0-9_.-])")
        tiers = tuple(TierConfig.parse(n, r) for n, r in tiers_raw.items())
        return cls(model=model, tiers=tiers, base_dir=base_dir)

    @classmethod
    def load(cls, path: Path) -> ServiceConfig:
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
        return cls.from_dict(raw, base_dir=path.parent)
