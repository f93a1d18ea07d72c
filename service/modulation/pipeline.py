"""One call that modulates a mixed batch: utility noise, then focus, each row with its own knobs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import check_logits, check_sigma
from .focus import focused
from .noise import NoiseSource
from .utility import noised


@dataclass(frozen=True)
class BatchModulation:
    """Per-row modulation of one batch (rows may belong to different keys and tiers)."""

    sigma: torch.Tensor
    """σ per row (N,), ≥ 0; 0 leaves the row's utility untouched."""
    seeds: torch.Tensor
    """Keyed-noise seed per row (N,) int64, from ``KeyedNoise.seeds``; ignored by fresh noise."""
    focus: torch.Tensor | None = None
    """Signed focus strengths from ``focus_field`` (N×C or N×C×H×W), or None."""
    cells: torch.Tensor | None = None
    """Noise cell per row (N,) int64 for N×C logits, e.g. from a ``ReplayMemory``; None: the
    keyed source digests the logits itself."""


def modulate(logits: torch.Tensor, params: BatchModulation, source: NoiseSource) -> torch.Tensor:
    """Return modulated logits; the input is not changed and σ = 0 rows without focus are exact."""
    check_logits(logits)
    sigma = check_sigma(params.sigma, logits.shape[0]).to(logits.device)
    field = params.focus
    if field is not None and not bool((field != 0).any()):
        field = None
    if field is None and not bool((sigma > 0).any()):
        return logits.clone()
    # The digest grid scales with σ. A σ = 0 row (a top tier: nothing to hide) that asks for
    # focus takes a grid of one logit unit: a grid as wide as a strong focus would give every
    # pixel of a mask one shared |η|, a single lucky or unlucky draw for the whole request.
    scale = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    streams = 2 if field is not None else 1
    # Sources written before `cells` existed still work when no cells are given.
    noise = (
        source.sample(logits, params.seeds, scale, streams)
        if params.cells is None
        else source.sample(logits, params.seeds, scale, streams, cells=params.cells)
    )
    # Logits and σ were checked above; the unchecked steps avoid a second pass over the logits.
    out = noised(logits, sigma, noise[0])
    if field is not None:
        out = focused(out, field, noise[1].abs())
    return out
