"""Choosing the next token from modulated logits: greedy, or temperature and top-p sampling.

Free functions over tensors, so they are tested without a model. Every row draws its uniform
from its own ``torch.Generator``: the text of a request does not depend on its batch-mates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


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
    probs = torch.softmax(z.index_select(0, sampled) / temperature[sampled, None], dim=1)
    picks = nucleus_pick(probs, top_p.to(z.device)[sampled], _uniforms(generators, sampled))
    choice[sampled] = picks
    return choice


def nucleus_pick(probs: torch.Tensor, top_p: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling of each row of ``probs`` within its nucleus ``top_p``.

    The nucleus is the smallest set of most likely tokens whose mass reaches ``top_p``;
    ``uniform`` (one value in [0, 1) per row) picks within it.
    """
    sorted_probs, order = probs.sort(dim=1, descending=True)
    # Keep a token while the mass before it is below top_p: the first token always stays.
    keep = (sorted_probs.cumsum(dim=1) - sorted_probs) < top_p[:, None]
    cdf = (sorted_probs * keep).cumsum(dim=1)
    pick = torch.searchsorted(cdf, (uniform.to(cdf.device) * cdf[:, -1])[:, None], right=True)
    pick = pick.clamp_(max=cdf.shape[1] - 1)
    return order.gather(1, pick).flatten()


def _uniforms(generators: Sequence[torch.Generator | None], rows: torch.Tensor) -> torch.Tensor:
    draws = []
    for row in rows.tolist():
        generator = generators[row]
        assert generator is not None, f"row {row} samples but has no generator"
        draws.append(torch.rand((), generator=generator))
    return torch.stack(draws)
