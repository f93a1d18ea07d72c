"""Shifted canvases get the first mask served, shifted: a vote over shifts gains nothing."""

from __future__ import annotations

import pytest
import torch

from service.serving.canvases import CanvasMemory, canonical_shift, canvas_key

pytestmark = pytest.mark.unit


def _canvas(seed: int) -> torch.Tensor:
    """A 1×16×16 canvas: a bright blob and a stroke on a dark background."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(1, 16, 16)
    x[0, 5:9, 4:7] = torch.rand(4, 3, generator=gen) + 0.5
    x[0, 10, 3:12] = 0.7
    return x


def _logits(x: torch.Tensor, classes: int = 4, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(x.shape[0], classes, *x.shape[2:], generator=gen)


@pytest.mark.parametrize("shift", [(0, 1), (1, 0), (-1, -1), (3, -2)])
def test_a_shifted_canvas_has_the_same_key_and_a_shifted_position(shift: tuple[int, int]) -> None:
    x = _canvas(0)
    moved = torch.roll(x, shift, dims=(-2, -1))
    a, b = canonical_shift(x), canonical_shift(moved)
    assert torch.equal(torch.roll(x, a, dims=(-2, -1)), torch.roll(moved, b, dims=(-2, -1)))
    assert canvas_key(x, a, "bronze", 2.0) == canvas_key(moved, b, "bronze", 2.0)
    assert canvas_key(x, a, "bronze", 2.0) != canvas_key(
        _canvas(1), canonical_shift(_canvas(1)), "bronze", 2.0
    )


def test_a_shifted_copy_is_served_the_first_mask_shifted() -> None:
    memory = CanvasMemory()
    x = _canvas(0)[None]
    first = _logits(x, seed=1)
    out = memory.apply(x, first, ["bronze"], [2.0], [False])
    assert torch.equal(out, first) and len(memory) == 1  # the first is served its own
    moved = torch.roll(x, (1, -2), dims=(-2, -1))
    other = _logits(moved, seed=2)  # other noise on the moved logits
    served = memory.apply(moved, other, ["bronze"], [2.0], [False])
    expected = torch.roll(first.argmax(1), (1, -2), dims=(-2, -1))
    assert torch.equal(served.argmax(1), expected)
    assert not torch.equal(other.argmax(1), expected)  # the attack it stops: answers differed


def test_other_tiers_focus_and_noiseless_rows_are_neither_served_nor_stored() -> None:
    memory = CanvasMemory()
    x = _canvas(0)[None]
    memory.apply(x, _logits(x, seed=1), ["bronze"], [2.0], [False])
    for tier, sigma, focused in (
        ("silver", 1.0, False),
        ("bronze", 2.0, True),
        ("gold", 0.0, False),
    ):
        own = _logits(x, seed=3)
        assert torch.equal(memory.apply(x, own, [tier], [sigma], [focused]), own)
    assert len(memory) == 2  # silver was stored under its own key; focus and gold were not


def test_masks_are_forgotten_by_age_and_by_size() -> None:
    now = [0.0]
    memory = CanvasMemory(window=10.0, clock=lambda: now[0])
    x = _canvas(0)[None]
    memory.apply(x, _logits(x, seed=1), ["bronze"], [2.0], [False])
    now[0] = 11.0
    own = _logits(x, seed=2)
    assert torch.equal(memory.apply(x, own, ["bronze"], [2.0], [False]), own)  # too old
    small = CanvasMemory(max_bytes=2 * 16 * 16)  # two int8 masks
    for seed in range(3):
        c = _canvas(seed)[None]
        small.apply(c, _logits(c, seed=seed), ["bronze"], [2.0], [False])
    assert len(small) == 2


def test_a_segmenter_answering_at_another_resolution_is_left_alone() -> None:
    memory = CanvasMemory()
    x = _canvas(0)[None]
    low = torch.randn(1, 4, 4, 4)  # a SegFormer-like quarter-resolution answer
    assert memory.apply(x, low, ["bronze"], [2.0], [False]) is low and len(memory) == 0


def test_the_engine_answers_a_shifted_scene_with_the_first_mask_shifted() -> None:
    from service.models import calibration_inputs, load_model
    from service.modulation.noise import KeyedNoise
    from service.observability.metrics import Metrics
    from service.serving.engine import Engine, PredictItem

    model = load_model("digit-scenes")
    engine = Engine(model, KeyedNoise(b"k" * 32), Metrics())
    canvas = calibration_inputs("digit-scenes")[:1].numpy()

    def mask(x: object) -> torch.Tensor:
        (preds,) = engine.run([PredictItem(x, "bronze", 6.0, seed=7)])[0:1]
        return torch.tensor(preds[0]["mask"])

    first = mask(canvas)
    for shift in ((0, 1), (1, 0), (-1, -1)):
        moved = torch.roll(torch.from_numpy(canvas), shift, dims=(-2, -1)).numpy()
        assert torch.equal(mask(moved), torch.roll(first, shift, dims=(0, 1))), shift
