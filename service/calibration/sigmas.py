"""Calibration: the σ each `utility` tier is sold at.

The math (the agreement integral, bisection to a target) is pure torch in
``modulation/calibration.py``; what a model calibrates on is ``calibration_data.py`` and the
cache that remembers the answer ``calibration_cache.py``. This module turns tier targets into σ:
cached when a valid entry reproduces its target, else calibrated (and cached). A classifier
behind a replay memory is calibrated on the agreement expected through that memory.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence

import torch

from ..config import TierConfig
from ..modulation import (
    DigestEncoder,
    KeyedNoise,
    expected_agreement,
    memory_anchors,
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
    digest: DigestEncoder | None = None,
) -> dict[str, float]:
    """Every tier's σ: raw `sigma` as given, `utility` 1 as 0, other `utility` targets by
    calibration (cached; the logits are computed at most once).

    With ``keyed`` (the server's keyed noise) and a vision model: a classifier's σ is bisected
    on the expected agreement through the tier's replay memory, the calibration inputs taken in
    order through a fresh memory keyed on ``digest`` at its threshold (each row is served its
    cluster's first answer; without a digest every row its own); a segmenter's σ on the
    agreement its keyed noise actually gives on the calibration inputs, starting from the
    ordering integral's σ. A cached σ is used only when valid (a finite number, > 0 for a
    target below 1, within the largest σ calibration looks for) and, for vision models, when it
    reproduces the target on the calibration logits; anything else is recomputed with a warning
    naming the file, so a tampered cache can neither serve a tier at another utility nor stop
    the server.
    """
    state: dict[str, torch.Tensor] = {}

    def logits() -> torch.Tensor:
        if calibration.logits is None:
            raise ValueError("no calibration logits")
        if "z" not in state:
            state["z"] = calibration.logits()
        return state["z"]

    method = (
        _Method(calibration, logits, keyed, digest)
        if keyed is not None and calibration.served
        else None
    )
    sigmas: dict[str, float] = {}
    for cfg in configs:
        if cfg.sigma is not None:
            sigmas[cfg.name] = cfg.sigma
            continue
        assert cfg.utility is not None
        if cfg.utility >= 1.0:
            sigmas[cfg.name] = 0.0
            continue
        key = (
            calibration_key(
                calibration.fingerprint,
                calibration.inputs,
                cfg.utility,
                method.name(cfg.name) if method is not None else "",
            )
            if calibration.inputs is not None
            else None
        )
        raw = cache.get(key) if cache is not None and key is not None else None
        if raw is not None:
            sigma = valid_cached_sigma(raw, cfg.utility)
            if sigma is not None and method is not None:
                sigma = method.reproduces(sigma, cfg.utility, cfg.name)
            elif sigma is not None and calibration.served and calibration.logits is not None:
                got = expected_agreement(logits(), sigma)
                sigma = sigma if abs(got - cfg.utility) <= INTEGRAL_TOLERANCE else None
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
        if method is not None:
            sigma = method.sigma(cfg.utility, cfg.name)
        else:
            sigma = sigma_for_agreement(logits(), cfg.utility)
        if cache is not None and key is not None:
            cache.put(key, sigma)
        sigmas[cfg.name] = sigma
    return sigmas


class _Method:
    """How a vision model's σ is calibrated against the noise it serves (see ``tier_sigmas``):
    through the replay memory for classification rows, on the served keyed noise for pixels."""

    def __init__(
        self,
        calibration: CalibrationSet,
        logits: Callable[[], torch.Tensor],
        keyed: KeyedNoise,
        digest: DigestEncoder | None,
    ) -> None:
        self.calibration = calibration
        self.logits = logits
        self.keyed = keyed
        self.digest = digest
        self._anchors: torch.Tensor | None = None

    @property
    def rows(self) -> bool:
        """Classification rows (N×C logits), not pixels."""
        return self.logits().dim() == 2

    def name(self, tier: str) -> str:
        """What the cache key says σ was calibrated against."""
        if not self.rows:
            return hashlib.sha256(str(self.keyed.tier_seed(tier)).encode()).hexdigest()
        if self.digest is None:
            return "memory:none"
        return f"memory:{self.digest.fingerprint()}:{self.digest.threshold!r}"

    def anchors(self) -> torch.Tensor | None:
        """Whose answer each calibration row is served through a fresh memory (None: its own)."""
        if self.digest is None or self.calibration.inputs is None:
            return None
        if self._anchors is None:
            device = next(self.digest.parameters()).device
            with torch.inference_mode():
                embedding = self.digest(self.calibration.inputs.to(device)).cpu()
            self._anchors = memory_anchors(embedding, self.digest.threshold)
        return self._anchors

    def sigma(self, target: float, tier: str) -> float:
        z = self.logits()
        start = sigma_for_agreement(z, target)
        if self.rows:
            anchors = self.anchors()
            return start if anchors is None else sigma_for_agreement(z, target, anchors=anchors)
        noise_at = served_noise(self.keyed, tier, z)
        return sigma_for_served_agreement(z, target, noise_at, start=start)

    def reproduces(self, sigma: float, target: float, tier: str) -> float | None:
        """``sigma`` when it gives ``target`` on the calibration logits (quick check)."""
        z = self.logits()
        if self.rows:
            got = expected_agreement(z, sigma, self.anchors())
            return sigma if abs(got - target) <= INTEGRAL_TOLERANCE else None
        got = served_agreement(z, sigma, served_noise(self.keyed, tier, z)(sigma))
        return sigma if abs(got - target) <= SERVED_TOLERANCE else None
