"""Sampling on plain tensors: greedy, nucleus, float32 edge cases, per-row generators."""

from __future__ import annotations

import pytest
import torch

from service.generation.sampling import (
    FLOAT32_TINY,
    choose_tokens,
    nucleus_pick,
    sampling_temperature,
    sampling_top_p,
)

pytestmark = pytest.mark.unit


def _logits(rows: int = 6, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 4


def _choose(z: torch.Tensor, temperature: float, top_p: float, seed: int = 0) -> torch.Tensor:
    n = z.shape[0]
    t = torch.full((n,), sampling_temperature(temperature))
    p = torch.full((n,), sampling_top_p(top_p))
    generators = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    return choose_tokens(z, t, p, generators)


@pytest.mark.parametrize("top_p", [1e-300, 1e-45, 1e-39, 1e-12])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 5.0, 100.0])
def test_a_tiny_top_p_keeps_the_most_likely_token(top_p: float, temperature: float) -> None:
    z = _logits()
    for seed in range(10):
        assert _choose(z, temperature, top_p, seed).tolist() == z.argmax(dim=1).tolist()


@pytest.mark.parametrize("temperature", [1e-300, 1e-45, 1e-38, FLOAT32_TINY, 1e-30, 1e-12])
def test_a_tiny_temperature_is_greedy(temperature: float) -> None:
    z = _logits(rows=8, vocab=500)
    for seed in range(10):
        assert _choose(z, temperature, 1.0, seed).tolist() == z.argmax(dim=1).tolist()


def test_the_knobs_are_brought_into_float32_range() -> None:
    assert sampling_temperature(1e-38) == 0.0 and sampling_temperature(0.0) == 0.0
    assert sampling_temperature(0.7) == 0.7
    assert sampling_top_p(1e-300) == FLOAT32_TINY and sampling_top_p(0.9) == 0.9
    assert torch.tensor([sampling_top_p(1e-300)], dtype=torch.float32).item() > 0


@pytest.mark.parametrize(
    ("top_p", "allowed"), [(0.35, {0}), (0.5, {0, 1}), (0.75, {0, 1, 2}), (1.0, {0, 1, 2, 3})]
)
def test_the_nucleus_is_the_smallest_set_reaching_top_p(top_p: float, allowed: set[int]) -> None:
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).repeat(400, 1)
    uniform = torch.rand(400, generator=torch.Generator().manual_seed(1))
    picks = set(nucleus_pick(probs, torch.full((400,), top_p), uniform).tolist())
    assert picks == allowed


def test_a_uniform_at_the_top_of_the_nucleus_stays_inside_it() -> None:
    probs = torch.tensor([[0.5, 0.25, 0.25, 0.0]])
    pick = nucleus_pick(probs, torch.tensor([0.6]), torch.tensor([1.0]))
    assert pick.tolist() == [1]


def test_choosing_leaves_the_logits_unchanged_and_rows_independent() -> None:
    z = _logits(rows=4)
    before = z.clone()
    alone = _choose(z[:1], 1.0, 0.9, seed=3)
    together = _choose(z, 1.0, 0.9, seed=3)
    assert torch.equal(z, before)
    assert together[0] == alone[0]  # row 0 draws from its own generator either way
    greedy = choose_tokens(z, torch.zeros(4), torch.ones(4), [None] * 4)
    assert greedy.tolist() == z.argmax(dim=1).tolist()
