"""Calibration agrees with Monte Carlo (also through a replay memory's shared answers) and
inverts to σ."""

from __future__ import annotations

import itertools

import pytest
import torch

from service.modulation import (
    ModulationArgumentError,
    expected_agreement,
    memory_anchors,
    predicted_accuracy,
    sigma_for_agreement,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def logits() -> torch.Tensor:
    return torch.randn(500, 10, generator=torch.Generator().manual_seed(0)) * 5


def _monte_carlo(
    logits: torch.Tensor, sigma: float, target: torch.Tensor, draws: int = 400
) -> float:
    gen = torch.Generator().manual_seed(1)
    hits = 0.0
    for _ in range(draws):
        noisy = logits + sigma * torch.randn(logits.shape, generator=gen)
        hits += float((noisy.argmax(1) == target).float().mean())
    return hits / draws


@pytest.mark.parametrize("sigma", [0.5, 2.0, 8.0, 32.0])
def test_agreement_matches_monte_carlo(logits: torch.Tensor, sigma: float) -> None:
    predicted = expected_agreement(logits, sigma)
    measured = _monte_carlo(logits, sigma, logits.argmax(1))
    assert abs(predicted - measured) < 0.01


def test_accuracy_with_labels_matches_monte_carlo(logits: torch.Tensor) -> None:
    labels = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(2))
    labels[:300] = logits[:300].argmax(1)
    predicted = predicted_accuracy(logits, labels, 4.0)
    assert abs(predicted - _monte_carlo(logits, 4.0, labels)) < 0.01


def test_agreement_is_monotone_from_one_to_chance(logits: torch.Tensor) -> None:
    values = [expected_agreement(logits, s) for s in (0.0, 0.1, 1.0, 4.0, 16.0, 1000.0)]
    assert values[0] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert abs(values[-1] - 0.1) < 0.01


def test_segmentation_logits_are_per_pixel() -> None:
    z = torch.randn(2, 4, 3, 3) * 3
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    assert expected_agreement(z, 2.0) == pytest.approx(expected_agreement(flat, 2.0))


@pytest.mark.parametrize("target", [0.95, 0.75, 0.5, 0.2])
def test_sigma_for_agreement_inverts(logits: torch.Tensor, target: float) -> None:
    sigma = sigma_for_agreement(logits, target)
    assert expected_agreement(logits, sigma) == pytest.approx(target, abs=1e-3)


def test_target_one_is_sigma_zero(logits: torch.Tensor) -> None:
    assert sigma_for_agreement(logits, 1.0) == 0.0


@pytest.mark.parametrize("target", [0.05, 0.1, 1.5, float("nan")])
def test_bad_targets_name_the_argument(logits: torch.Tensor, target: float) -> None:
    with pytest.raises(ModulationArgumentError) as err:
        sigma_for_agreement(logits, target)
    assert err.value.argument == "target"


def test_negative_sigma_is_rejected(logits: torch.Tensor) -> None:
    with pytest.raises(ModulationArgumentError, match="sigma"):
        expected_agreement(logits, -1.0)


def test_memory_anchors_name_each_clusters_first_row() -> None:
    a, b = torch.zeros(8), torch.zeros(8)
    a[0], b[1] = 1.0, 1.0
    near_a = a + 0.1 * b  # cosine 0.995 to a
    chained = a + 0.3 * b  # 0.96 to a, 0.98 to near_a
    rows = torch.stack([a, b, near_a, torch.ones(8), chained, b + 0.05 * a])
    assert memory_anchors(rows, threshold=0.97).tolist() == [0, 1, 0, 3, 0, 1]
    assert memory_anchors(rows, threshold=0.999).tolist() == [0, 1, 2, 3, 4, 5]


def test_agreement_through_anchors_matches_monte_carlo(logits: torch.Tensor) -> None:
    """Row i is served row anchors[i]'s noisy answer: it agrees when that answer is its own
    clean top-1 (anchors across classes too, so a wrong class is counted as a miss)."""
    gen = torch.Generator().manual_seed(3)
    anchors = torch.arange(500)
    anchors[250:] = torch.randint(0, 250, (250,), generator=gen)
    sigma = 4.0
    predicted = expected_agreement(logits, sigma, anchors)
    hits = 0.0
    for _ in range(400):
        noisy = logits + sigma * torch.randn(logits.shape, generator=gen)
        hits += float((noisy.argmax(1)[anchors] == logits.argmax(1)).float().mean())
    assert abs(predicted - hits / 400) < 0.01
    # Far from each row's own expected agreement: the shared answers are what is counted.
    assert abs(predicted - expected_agreement(logits, sigma)) > 0.1
    assert expected_agreement(logits, sigma, torch.arange(500)) == pytest.approx(
        expected_agreement(logits, sigma)
    )
    sigma = sigma_for_agreement(logits, 0.4, anchors=anchors)
    assert expected_agreement(logits, sigma, anchors) == pytest.approx(0.4, abs=1e-3)
    with pytest.raises(ModulationArgumentError, match="anchors"):
        expected_agreement(logits, sigma, anchors[:10])
