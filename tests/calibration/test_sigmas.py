"""service/calibration/sigmas.py: σ per tier target; cache.py: its cache and key;
calibration_data.py: the calibration logits per model kind (a shipped vision model's split, a
causal LM's teacher-forced steps)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.calibration.cache import CalibrationCache, calibration_key
from service.calibration.data import (
    CalibrationSet,
    generation_key,
    generation_logits,
    shortlist_logits,
    teacher_forced_logits,
    vision_calibration,
)
from service.calibration.sigmas import tier_sigmas
from service.config import TierConfig
from service.models import InputError, read_texts
from service.modulation import expected_agreement, sigma_for_agreement

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]

TIERS = (
    TierConfig.parse("gold", {"utility": 1.0}),
    TierConfig.parse("silver", {"utility": 0.8}),
    TierConfig.parse("raw", {"sigma": 3.0}),
    TierConfig.parse("bronze", {"utility": 0.5}),
)


def _counting_set(logits: torch.Tensor) -> tuple[CalibrationSet, list[int]]:
    calls: list[int] = []

    def compute() -> torch.Tensor:
        calls.append(1)
        return logits

    return CalibrationSet("model", torch.arange(4, dtype=torch.uint8), compute), calls


def test_tier_sigmas_calibrate_once_then_come_from_the_cache(tmp_path: Path) -> None:
    logits = torch.randn(300, 10, generator=torch.Generator().manual_seed(0)) * 4
    cache = CalibrationCache(tmp_path / "calibration.json")
    calibration, calls = _counting_set(logits)
    sigmas = tier_sigmas(TIERS, calibration, cache)
    assert calls == [1]  # two utility targets, one computation of the logits
    assert sigmas["gold"] == 0.0 and sigmas["raw"] == 3.0
    assert sigmas["silver"] == pytest.approx(sigma_for_agreement(logits, 0.8))
    assert 0 < sigmas["silver"] < sigmas["bronze"]
    again, calls = _counting_set(logits)
    assert tier_sigmas(TIERS, again, cache) == sigmas and calls == []


def test_a_utility_tier_without_calibration_data_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"tiers\.silver\.utility needs calibration inputs"):
        tier_sigmas(TIERS, CalibrationSet("model", None, None), None)
    assert tier_sigmas(TIERS[:1], CalibrationSet("model", None, None), None) == {"gold": 0.0}


def test_the_cache_key_changes_with_model_inputs_and_target() -> None:
    inputs = torch.zeros(3)
    key = calibration_key("a", inputs, 0.8)
    assert key == calibration_key("a", torch.zeros(3), 0.8)
    assert len({key, calibration_key("b", inputs, 0.8), calibration_key("a", inputs, 0.7)}) == 3
    assert key != calibration_key("a", torch.ones(3), 0.8)


def test_an_unreadable_cache_costs_only_a_recompute(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    path.write_text("not json")
    cache = CalibrationCache(path)
    assert cache.get("k") is None
    cache.put("k", 1.5)
    assert CalibrationCache(path).get("k") == 1.5


def test_a_user_vision_model_has_no_calibration_data() -> None:
    from service.models import load_model

    digits = load_model("digits")
    shipped = vision_calibration(digits, "digits")
    assert shipped.inputs is not None and shipped.logits is not None
    assert shipped.logits().shape == (shipped.inputs.shape[0], 10)
    user = vision_calibration(digits, {"task": "classification", "path": "m.pt"})
    assert user.inputs is None and user.logits is None


# Generation models: teacher-forced steps -------------------------------------------------------


@pytest.fixture(scope="module")
def lm(tiny_lm_dir: Path):  # type: ignore[no-untyped-def]
    pytest.importorskip("transformers")
    from service.models import CausalLM

    return CausalLM.load(tiny_lm_dir)


@pytest.fixture(scope="module")
def heldout_steps(lm, tiny_lm_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Teacher-forced step logits and next tokens of the held-out text."""
    texts = (tiny_lm_dir / "heldout.txt").read_text().splitlines()
    return teacher_forced_logits(lm, texts, max_tokens=4096)


def test_teacher_forced_logits_are_the_model_steps(  # type: ignore[no-untyped-def]
    lm, heldout_steps: tuple[torch.Tensor, torch.Tensor], tiny_lm_dir: Path
) -> None:
    logits, labels = heldout_steps
    assert logits.shape == (labels.shape[0], lm.vocab_size) and logits.dtype == torch.float32
    first = (tiny_lm_dir / "heldout.txt").read_text().splitlines()[0]
    ids = [*lm.encode(first), 0]
    with torch.inference_mode():
        direct = lm.model(input_ids=torch.tensor([ids])).logits[0, :-1]
    steps = len(ids) - 1
    torch.testing.assert_close(logits[:steps], direct, atol=1e-4, rtol=1e-4)
    assert labels[:steps].tolist() == ids[1:]
    assert float((logits.argmax(1) == labels).double().mean()) > 0.3  # far above chance
    with pytest.raises(InputError, match="max_tokens"):
        teacher_forced_logits(lm, ["a b"], max_tokens=0)


@pytest.mark.parametrize("sigma", [0.5, 2.0])
def test_a_shortlist_predicts_agreement_like_the_whole_vocabulary(
    heldout_steps: tuple[torch.Tensor, torch.Tensor], sigma: float
) -> None:
    logits = heldout_steps[0][:512]
    short = shortlist_logits(logits, sigma)
    assert short.shape[0] == logits.shape[0]
    assert torch.equal(short[:, 0], logits.max(dim=1).values)
    full = expected_agreement(logits, sigma)
    assert abs(expected_agreement(short, sigma) - full) < 1e-3
    if sigma == 0.5:
        assert short.shape[1] < logits.shape[1] // 4  # the point: far fewer columns


def test_calibration_logits_give_the_sigma_of_the_whole_vocabulary(  # type: ignore[no-untyped-def]
    lm, tiny_lm_dir: Path
) -> None:
    texts = read_texts(tiny_lm_dir / "calibration.txt")
    lm.calibration_tokens = 256
    try:
        short = generation_logits(lm, texts, [0.95, 0.8])
        full, _ = teacher_forced_logits(lm, texts, max_tokens=256)
        key, same = generation_key(lm, texts), generation_key(lm, texts)
    finally:
        lm.calibration_tokens = 1024
    assert short.shape[0] == full.shape[0] == 256 and short.shape[1] < full.shape[1]
    sigma = sigma_for_agreement(short, 0.8)
    assert abs(expected_agreement(full, sigma) - 0.8) < 2e-3
    assert key.dtype == torch.uint8 and torch.equal(key, same)
    assert not torch.equal(key, generation_key(lm, texts))  # the step budget is part of it
    assert not torch.equal(generation_key(lm, texts), generation_key(lm, texts[1:]))
