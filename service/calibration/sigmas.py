"""Calibration: the σ each `utility` tier is sold at.

The math (the agreement integral, bisection to a target) is pure torch in
``modulation/calibration.py``; what a model calibrates on is ``calibration_data.py`` and the
cache that remembers the answer ``calibration_cache.py``. This module turns tier targets into σ:
cached when a valid entry reproduces its target, else calibrated (and cached).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import torch

from ..config import TierConfig
from ..modulation import (
    KeyedNoise,
    expected_agreement,
    served_agreement,
    served_noise,
    sigma_for_agreement,
    sigma_for_served_agreement,
    valid_cached_sigma,
)
from .cache import CalibrationCache, calibration_key
from .data import CalibrationSet

log = logging.getLogger(__name__)

# A cached σ is trusted when it reproduces its target on the calibration logits within this.
SERVED_TOLERANCE = 0.01
INTEGRAL_TOLERANCE = 0.005


def tier_sigmas(
    configs: Sequence[TierConfig],
    calibration: CalibrationSet,
    cache: CalibrationCache | None,
    keyed: KeyedNoise | None = None,
) -> dict[str, float]:
    """Every tier's σ: raw `sigma` as given, `utility` 1 as 0, other `utility` targets by
    calibration (cached; the logits are computed at most once).

    With ``keyed`` (the server's keyed noise) and a vision model, σ is bisected on the agreement
    the tier's keyed noise actually gives on the calibration inputs, starting from the ordering
    integral's σ. A cached σ is used only when valid (a finite number, > 0 for a target below 1,
    within the largest σ calibration looks for) and, for vision models, when it reproduces the
    target on the calibration logits; anything else is recomputed with a warning naming the
    file, so a tampered cache can neither serve a tier at another utility nor stop the server.
    """
    state: dict[str, torch.Tensor] = {}

    def logits() -> torch.Tensor:
        if calibration.logits is None:
            raise ValueError("no calibration logits")
        if "z" not in state:
            state["z"] = calibration.logits()
        return state["z"]

    served = keyed is not None and calibration.served
    sigmas: dict[str, float] = {}
    for cfg in configs:
        if cfg.sigma is not None:
            sigmas[cfg.name] = cfg.sigma
            continue
        assert cfg.utility is not None
        if cfg.utility >= 1.0:
            sigmas[cfg.name] = 0.0
            continue
        noise = (
            hashlib.sha256(str(keyed.tier_seed(cfg.name)).encode()).hexdigest()
            if served and keyed
            else ""
        )
        key = (
            calibration_key(calibration.fingerprint, calibration.inputs, cfg.utility, noise)
            if calibration.inputs is not None
            else None
        )
        raw = cache.get(key) if cache is not None and key is not None else None
        if raw is not None:
            sigma = valid_cached_sigma(raw, cfg.utility)
            if sigma is not None and calibration.served and calibration.logits is not None:
                sigma = _reproduces(
                    logits(), sigma, cfg.utility, keyed if served else None, cfg.name
                )
            if sigma is not None:
                sigmas[cfg.name] = sigma
                continue
            log.warning(
                "calibration cache entry rejected, recomputing",
                extra={
                    "file": str(cache.path if cache is not None else ""),
                    "tier": cfg.name,
                    "value": repr(raw)[:60],
                },
            )
        if calibration.logits is None:
            raise ValueError(
                f"tiers.{cfg.name}.utility needs calibration inputs for this model; "
                "give a raw `sigma` instead"
            )
        sigma = sigma_for_agreement(logits(), cfg.utility)
        if served and keyed is not None:
            noise_at = served_noise(keyed, cfg.name, logits())
            sigma = sigma_for_served_agreement(logits(), cfg.utility, noise_at, start=sigma)
        if cache is not None and key is not None:
            cache.put(key, sigma)
        sigmas[cfg.name] = sigma
    return sigmas


def _reproduces(
    z: torch.Tensor, sigma: float, target: float, keyed: KeyedNoise | None, tier: str
) -> float | None:
    """``sigma`` when it gives ``target`` on the calibration logits ``z`` (quick check)."""
    if keyed is not None:
        got = served_agreement(z, sigma, served_noise(keyed, tier, z)(sigma))
        return sigma if abs(got - target) <= SERVED_TOLERANCE else None
    got = expected_agreement(z, sigma)
    return sigma if abs(got - target) <= INTEGRAL_TOLERANCE else None
