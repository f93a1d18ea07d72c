"""Tiers: the σ each tier is sold at, who may use which tier, and the per-tier limits.

Tiers are ordered from highest to lowest utility; a key of one tier may ask for that tier or any
tier after it (lowering), never one before it (raising).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import TierConfig
from .errors import Forbidden, InvalidInput
from .modulation import sigma_for_agreement
from .ratelimit import RateLimiter

log = logging.getLogger(__name__)

# Bumped when the calibration method changes, so cached σ from an older method are not reused.
CALIBRATION_VERSION = "ghq48-v1"


@dataclass(frozen=True)
class Tier:
    """A tier as served: its rank (0 = highest), its σ and its limits."""

    name: str
    rank: int
    sigma: float
    utility: float | None
    limiter: RateLimiter | None
    focus: bool
    max_items: int | None


class TierTable:
    """The configured tiers, in order."""

    def __init__(self, tiers: list[Tier]) -> None:
        self._tiers = {t.name: t for t in tiers}
        self.order = [t.name for t in sorted(tiers, key=lambda t: t.rank)]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._tiers[name] for name in self.order)

    def __contains__(self, name: object) -> bool:
        return name in self._tiers

    def get(self, name: str) -> Tier:
        return self._tiers[name]

    def allowed_for(self, key_tier: str) -> list[str]:
        """The key's tier and every tier below it."""
        return self.order[self._tiers[key_tier].rank :]

    def resolve(self, key_tier: str, requested: str | None) -> Tier:
        """The tier to serve: the key's own, or a lower one it asked for; never a higher one."""
        if requested is None or requested == "":
            return self._tiers[key_tier]
        if requested not in self._tiers:
            raise InvalidInput(
                f"tier {requested!r} does not exist; tiers: {', '.join(self.order)}",
                field="X-AIM-Tier",
            )
        tier = self._tiers[requested]
        if tier.rank < self._tiers[key_tier].rank:
            raise Forbidden(
                f"tier {requested!r} is above this key's tier {key_tier!r}", field="X-AIM-Tier"
            )
        return tier


class CalibrationCache:
    """σ per (model, calibration inputs, target), in a JSON file; failures only cost a recompute."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def _read(self) -> dict[str, float]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            return {k: float(v) for k, v in data.items()} if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def get(self, key: str) -> float | None:
        return self._read().get(key)

    def put(self, key: str, sigma: float) -> None:
        if self.path is None:
            return
        data = self._read()
        data[key] = sigma
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            tmp.replace(self.path)
        except OSError as exc:  # a read-only cache dir must not stop the server
            log.warning("calibration cache not written", extra={"error": str(exc)})


def calibration_key(model_fingerprint: str, inputs: torch.Tensor, target: float) -> str:
    h = hashlib.sha256()
    h.update(CALIBRATION_VERSION.encode())
    h.update(model_fingerprint.encode())
    h.update(inputs.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr(float(target)).encode())
    return h.hexdigest()


def build_tiers(
    configs: tuple[TierConfig, ...],
    calibration_logits: Callable[[], torch.Tensor] | None,
    fingerprint: str = "",
    calibration_inputs: torch.Tensor | None = None,
    cache: CalibrationCache | None = None,
) -> TierTable:
    """Resolve every tier's σ: raw `sigma` as given, `utility` by calibration (cached)."""
    logits: torch.Tensor | None = None
    tiers = []
    for rank, cfg in enumerate(configs):
        if cfg.sigma is not None:
            sigma = cfg.sigma
        else:
            assert cfg.utility is not None
            if cfg.utility >= 1.0:
                sigma = 0.0
            else:
                key = (
                    calibration_key(fingerprint, calibration_inputs, cfg.utility)
                    if calibration_inputs is not None
                    else None
                )
                cached = cache.get(key) if cache is not None and key is not None else None
                if cached is not None:
                    sigma = cached
                else:
                    if calibration_logits is None:
                        raise ValueError(
                            f"tiers.{cfg.name}.utility needs calibration inputs for this model; "
                            "give a raw `sigma` instead"
                        )
                    if logits is None:
                        logits = calibration_logits()
                    sigma = sigma_for_agreement(logits, cfg.utility)
                    if cache is not None and key is not None:
                        cache.put(key, sigma)
        limiter = RateLimiter(cfg.rate_limit) if cfg.rate_limit is not None else None
        tiers.append(Tier(cfg.name, rank, sigma, cfg.utility, limiter, cfg.focus, cfg.max_items))
    return TierTable(tiers)
