"""The calibration cache: σ per (model, calibration inputs, noise, target) in a JSON file, and
the key that names an entry. A cached value is only a hint: ``calibration.tier_sigmas``
validates it before use, and any failure here only costs a recompute."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

# The logger calibration has always logged under (the "logger" field of its log lines).
log = logging.getLogger("service.calibration")

# Bumped when the calibration method changes, so cached σ from an older method are not reused.
# v2: cached values validated; served-noise σ. v3: classifiers through the replay memory.
CALIBRATION_VERSION = "ghq48-v3"


class CalibrationCache:
    """σ per (model, calibration inputs, noise, target), in a JSON file; failures only cost a
    recompute. Values come back as stored (any JSON value): the caller validates them."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.warning(
                "calibration cache unreadable, recomputing",
                extra={"file": str(self.path), "error": f"{type(exc).__name__}: {exc}"[:200]},
            )
            return {}
        if not isinstance(data, dict):
            log.warning(
                "calibration cache is not a mapping, recomputing", extra={"file": str(self.path)}
            )
            return {}
        return data

    def get(self, key: str) -> Any:
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


def calibration_key(
    model_fingerprint: str, inputs: torch.Tensor, target: float, noise: str = ""
) -> str:
    """``noise`` names the served noise σ was calibrated against (empty: the integral)."""
    h = hashlib.sha256()
    h.update(CALIBRATION_VERSION.encode())
    h.update(model_fingerprint.encode())
    h.update(inputs.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr(float(target)).encode())
    if noise:
        h.update(b"\x00served\x00" + noise.encode())
    return h.hexdigest()
