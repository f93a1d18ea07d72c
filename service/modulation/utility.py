"""Utility modulation: z' = z + σ_row · ε."""

from __future__ import annotations

import torch

from ._checks import check_logits, check_sigma, row_view
from .errors import ModulationArgumentError


def add_utility_noise(
    logits: torch.Tensor, sigma: torch.Tensor | float, noise: torch.Tensor
) -> torch.Tensor:
    """Return ``logits + σ · noise`` with one σ per row; rows with σ = 0 come back bit-identical.

    ``noise`` is standard normal with the shape of ``logits`` (fresh or keyed, see ``noise.py``).
    The input is never modified in place.
    """
    check_logits(logits)
    sig = check_sigma(torch.as_tensor(sigma), logits.shape[0]).to(logits.device)
    if noise.shape != logits.shape:
        raise ModulationArgumentError(
            "noise", tuple(noise.shape), f"has to have the shape of logits {tuple(logits.shape)}"
        )
    return noised(logits, sig, noise)


def noised(logits: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """`add_utility_noise` without the argument checks, for callers that made them once."""
    s = row_view(sigma, logits)
    # `where` rather than `z + 0·ε`: adding +0.0 turns -0.0 into +0.0, and σ = 0 rows must be exact.
    return torch.where(s > 0, logits + s * noise, logits)
