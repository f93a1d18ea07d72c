"""The shipped models load through the public API and reach their held-out scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.models import (
    SHIPPED,
    ModelLoadError,
    VisionModel,
    accuracy,
    calibration_inputs,
    digit_scenes,
    digits_splits,
    heldout,
    load_model,
    mean_iou,
    model_card,
)
from service.models.architectures import centre_of_mass

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def digits() -> VisionModel:
    return load_model("digits")


@pytest.fixture(scope="module")
def scenes() -> VisionModel:
    return load_model("digit-scenes")


def test_digits_reach_heldout_accuracy(digits: VisionModel) -> None:
    x, y = heldout("digits")
    assert x.shape == (540, 1, 8, 8) and y.shape == (540,)
    logits = digits.forward(x)
    assert logits.shape == (540, 10) and logits.dtype == torch.float32
    assert accuracy(logits.argmax(1), y) >= 0.97


def test_digit_scenes_reach_heldout_miou(scenes: VisionModel) -> None:
    x, masks = heldout("digit-scenes")
    assert x.shape == (128, 1, 32, 32) and masks.shape == (128, 32, 32)
    logits = scenes.forward(x)
    assert logits.shape == (128, 11, 32, 32)
    assert mean_iou(logits.argmax(1), masks, 11) >= 0.85


def test_shipped_metadata(digits: VisionModel, scenes: VisionModel) -> None:
    assert digits.task == "classification" and digits.num_classes == 10
    assert digits.labels == [str(d) for d in range(10)]
    assert digits.input_spec.to_dict() == {
        "shape": [1, 8, 8],
        "low": 0.0,
        "high": 16.0,
        "mean": None,
        "std": None,
        "scale": 16.0,
    }
    assert scenes.task == "segmentation" and scenes.labels[0] == "background"
    assert scenes.num_classes == 11 and scenes.input_spec.shape == (1, 32, 32)
    for name in SHIPPED:
        card = model_card(name)
        assert "Held-out" in card and f"python scripts/train_{name.replace('-', '_')}.py" in card


def test_calibration_inputs_are_unlabeled_and_disjoint_from_heldout() -> None:
    cal = calibration_inputs("digits")
    held, _ = heldout("digits")
    assert cal.shape == (500, 1, 8, 8) and float(cal.min()) >= 0 and float(cal.max()) <= 1
    held_rows = {tuple(row) for row in held.reshape(len(held), -1).tolist()}
    cal_rows = {tuple(row) for row in cal.reshape(len(cal), -1).tolist()}
    assert not held_rows & cal_rows
    assert calibration_inputs("digit-scenes").shape == (64, 1, 32, 32)


def test_digit_splits_are_disjoint_and_sized() -> None:
    splits = digits_splits()
    sizes = [len(splits.train[0]), len(splits.calibration[0]), len(splits.heldout[0])]
    assert sizes == [757, 500, 540]
    train, cal, held = (
        {x.tobytes() for x in part[0]}
        for part in (splits.train, splits.calibration, splits.heldout)
    )
    assert not (train & held) and not (cal & held) and not (train & cal)


def test_digit_scenes_are_deterministic_and_well_formed() -> None:
    x1, m1 = digit_scenes("train", 6, seed=3)
    x2, m2 = digit_scenes("train", 6, seed=3)
    assert np.array_equal(x1, x2) and np.array_equal(m1, m2)
    assert x1.shape == (6, 32, 32) and x1.dtype == np.float32 and m1.dtype == np.int64
    assert float(x1.min()) >= 0 and float(x1.max()) <= 16
    for canvas, mask in zip(x1, m1, strict=True):
        assert mask.max() >= 1 and (mask > 0).mean() < 0.6
        assert np.all((mask > 0) == (canvas > 4))  # the mask is the stroke, noise stays below
    x3, _ = digit_scenes("heldout", 6, seed=3)
    assert not np.array_equal(x1, x3)


def test_forward_and_prepare_agree_with_heldout(digits: VisionModel) -> None:
    raw = digits_splits().heldout[0][:4]
    prepared = torch.stack([digits.prepare(item.tolist()) for item in raw])
    assert torch.equal(prepared, heldout("digits")[0][:4])
    digits.warmup((1, 3))


@pytest.mark.parametrize("rows", [1, 2, 7, 32, 100])
def test_digits_embedding_pass_agrees_with_two_passes(digits: VisionModel, rows: int) -> None:
    """forward_with_embedding runs x and its centred copy as one batch; it must give what two
    separate passes give (the logits `forward` serves, the penultimate activations of the
    centred input), to float tolerance: the conv kernels may differ with the batch size."""
    network = digits.module
    x = heldout("digits")[0][:rows]
    with torch.inference_mode():
        logits, embedding = network.forward_with_embedding(x)
        centred = network.features(centre_of_mass(x))
        hidden = network.classifier[:-1](centred)
        torch.testing.assert_close(logits, network(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(embedding, hidden, rtol=1e-5, atol=1e-5)
        assert torch.equal(logits.argmax(dim=1), network(x).argmax(dim=1))


def test_fingerprint_is_stable_and_distinct(digits: VisionModel, scenes: VisionModel) -> None:
    again = load_model("digits")
    assert digits.fingerprint() == again.fingerprint()
    assert len(digits.fingerprint()) == 64 and digits.fingerprint() != scenes.fingerprint()
    with torch.no_grad():
        next(again.module.parameters()).add_(1e-3)
    again._fingerprint = None
    assert again.fingerprint() != digits.fingerprint()


def test_unknown_model_and_bundled_data_errors() -> None:
    with pytest.raises(ModelLoadError, match="not-a-model"):
        load_model("not-a-model")
    with pytest.raises(ValueError, match="no bundled data"):
        calibration_inputs("resnet50")
    with pytest.raises(ValueError, match="no bundled data"):
        heldout("resnet50")
