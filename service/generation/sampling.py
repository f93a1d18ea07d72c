"""Choosing the next token from modulated logits: greedy, or temperature and top-p sampling.

Free functions over tensors, so they are tested without a model. Every row draws its uniform
from its own ``torch.Generator``: the text of a request does not depend on its batch-mates.

The knobs are float32 on the way to the kernels, so they are first brought to what float32 can
represent (:func:`sampling_temperature`, :func:`sampling_top_p`): a temperature below the smallest
normal float32 is greedy (dividing by it would overflow), and a positive top-p that float32 would
round to 0 keeps the most likely token only, never an empty nucleus.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)
"""The smallest positive normal float32 (about 1.18e-38)."""


def sampling_temperature(temperature: float) -> float:
    """The temperature sampling uses: 0 (greedy) below :data:`FLOAT32_TINY`, else as given."""
    return float(temperature) if temperature >= FLOAT32_TINY else 0.0


def sampling_top_p(top_p: float) -> float:
    """The top-p sampling uses: at least :data:`FLOAT32_TINY` (the nucleus is never empty), at
    most 1."""
    return min(max(float(top_p), FLOAT32_TINY), 1.0)


def choose_tokens(
    z: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    generators: Sequence[torch.Generator | None],
) -> torch.Tensor:
    """The next token of each row of the A×V logits ``z``.

    A row with temperature 0 takes the arg-max of ``z`` (greedy); the others sample from
    softmax(z/T) cut to the nucleus ``top_p``, with a uniform drawn from the row's generator
    (``generators[i]`` for row i, None for greedy rows). Returns A int64 on ``z``'s device; ``z``
    is not changed.
    """
    choice = z.argmax(dim=1)
    temperature = temperature.to(z.device)
    sampled = (temperature > 0).nonzero().flatten()
    if sampled.numel() == 0:
        return choice
    rows = z.index_select(0, sampled)
    # Shift the top logit to 0 before dividing: a tiny T then sends the others to -inf, never
    # the top one to +inf (inf - inf would be NaN), so the limit T -> 0 is the arg-max.
    scaled = (rows - rows.amax(dim=1, keepdim=True)) / temperature[sampled, None]
    probs = torch.softmax(scaled, dim=1)
    picks = nucleus_pick(probs, top_p.to(z.device)[sampled], _uniforms(generators, sampled))
    choice[sampled] = picks
    return choice


def nucleus_pick(probs: torch.Tensor, top_p: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling of each row of ``probs`` within its nucleus ``top_p``.

    The nucleus is the smallest set of most likely tokens whose mass reaches ``top_p``, and
    always holds the most likely token; ``uniform`` (one value in [0, 1) per row) picks within it.
    """
    sorted_probs, order = probs.sort(dim=1, descending=True)
    # Keep a token while the mass before it is below top_p.
    keep = (sorted_probs.cumsum(dim=1) - sorted_probs) < top_p[:, None]
    keep[:, 0] = True  # even if top_p rounded to 0
    cdf = (sorted_probs * keep).cumsum(dim=1)
    pick = torch.searchsorted(cdf, (uniform.to(cdf.device) * cdf[:, -1])[:, None], right=True)
    # Never past the nucleus (a uniform times the mass can round up to the mass itself).
    pick = torch.minimum(pick, keep.sum(dim=1, keepdim=True) - 1)
    return order.gather(1, pick).flatten()


def _uniforms(generators: Sequence[torch.Generator | None], rows: torch.Tensor) -> torch.Tensor:
    draws = []
    for row in rows.tolist():
        generator = generators[row]
        assert generator is not None, f"row {row} samples but has no generator"
        draws.append(torch.rand((), generator=generator))
    return torch.stack(draws)
