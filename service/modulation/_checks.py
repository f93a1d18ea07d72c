"""Shared validation of logits and per-row parameters."""

from __future__ import annotations

import torch

from .errors import ModulationArgumentError


def check_logits(logits: torch.Tensor) -> None:
    """Logits are a floating tensor N×C or N×C×H×W with finite values."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise ModulationArgumentError("logits", type(logits).__name__, "has to be a float tensor")
    if logits.dim() not in (2, 4):
        raise ModulationArgumentError("logits", tuple(logits.shape), "has to be N×C or N×C×H×W")
    if not bool(torch.isfinite(logits).all()):
        bad = logits[~torch.isfinite(logits)].flatten()[0].item()
        raise ModulationArgumentError("logits", bad, "has to hold finite values only")


def check_sigma(sigma: torch.Tensor, rows: int) -> torch.Tensor:
    """σ is one non-negative finite value per row (a scalar broadcasts)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    if sigma.dim() == 0:
        sigma = sigma.expand(rows)
    if sigma.shape != (rows,):
        raise ModulationArgumentError("sigma", tuple(sigma.shape), f"has to hold {rows} values")
    if not bool(torch.isfinite(sigma).all()):
        raise ModulationArgumentError("sigma", sigma.tolist(), "has to be finite")
    if bool((sigma < 0).any()):
        raise ModulationArgumentError("sigma", float(sigma[sigma < 0][0]), "has to be non-negative")
    return sigma


def row_view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-row vector so it broadcasts over every other axis of ``like``."""
    return values.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))
