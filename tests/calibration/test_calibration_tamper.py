"""A tampered calibration cache cannot change a tier (issue 8): every bad value is recomputed
with a warning naming the file; a classifier's σ is calibrated through its replay memory."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from service.calibration.cache import CalibrationCache
from service.calibration.data import CalibrationSet, vision_calibration
from service.calibration.sigmas import tier_sigmas
from service.config import TierConfig
from service.modulation import (
    DigestEncoder,
    KeyedNoise,
    expected_agreement,
    load_digest,
    memory_anchors,
    valid_cached_sigma,
)

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]

TIERS = (TierConfig.parse("gold", {"utility": 1.0}), TierConfig.parse("bronze", {"utility": 0.65}))
KEYED = KeyedNoise(b"tamper-test")


@pytest.fixture(scope="module")
def digits_set() -> CalibrationSet:
    from service.models import load_model

    return vision_calibration(load_model("digits"), "digits")


@pytest.fixture(scope="module")
def digest() -> DigestEncoder:
    from service.models.digests import digest_path

    path = digest_path("digits")
    assert path is not None
    return load_digest(path)


def test_a_classifier_is_calibrated_through_its_replay_memory(
    digits_set: CalibrationSet, digest: DigestEncoder, tmp_path: Path
) -> None:
    """σ gives the target agreement expected when each calibration digit is served the answer of
    the first digit of its memory cluster; it does not depend on the secret (the realised
    agreement of one secret's draws on 500 digits would add their sampling error to σ)."""
    assert digits_set.logits is not None and digits_set.inputs is not None
    cache = CalibrationCache(tmp_path / "c.json")
    sigma = tier_sigmas(TIERS, digits_set, cache, KEYED, digest)["bronze"]
    z = digits_set.logits()
    anchors = memory_anchors(digest(digits_set.inputs), digest.threshold)
    assert int((anchors != torch.arange(len(anchors))).sum()) > 10  # the memory merges some
    assert expected_agreement(z, sigma, anchors) == pytest.approx(0.65, abs=1e-3)
    fresh = CalibrationCache(tmp_path / "d.json")
    other = tier_sigmas(TIERS, digits_set, fresh, KeyedNoise(b"another secret"), digest)
    assert other["bronze"] == sigma
    # Served through the memory it stays near the target (one secret's realised draws).
    seeds = KEYED.seeds(["bronze"] * len(z))
    noise = KEYED.sample(z, seeds, torch.ones(len(z)), 1, cells=KEYED.fine_cells(z, seeds))[0]
    answers = (z + sigma * noise).argmax(1)[anchors]
    assert abs(float((answers == z.argmax(1)).double().mean()) - 0.65) < 0.05


@pytest.mark.parametrize(
    "bad", [0.0, None, math.nan, 1e308, [1.0, 2.0], "4.0", True, -3.0, 1e-9, 60.0]
)
def test_a_tampered_sigma_is_recomputed_with_a_warning(
    digits_set: CalibrationSet,
    digest: DigestEncoder,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    bad: Any,
) -> None:
    path = tmp_path / "calibration.json"
    cache = CalibrationCache(path)
    honest = tier_sigmas(TIERS, digits_set, cache, KEYED, digest)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({k: bad for k in data}))
    with caplog.at_level(logging.WARNING):
        again = tier_sigmas(TIERS, digits_set, cache, KEYED, digest)
    assert again == honest
    if bad is not None:  # a null entry is simply missing
        assert any(getattr(r, "file", None) == str(path) for r in caplog.records)
    assert json.loads(path.read_text()) == data  # the cache is healed


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"a": ', "\udcff"])
def test_a_broken_cache_file_is_recomputed(
    digits_set: CalibrationSet, tmp_path: Path, text: str
) -> None:
    path = tmp_path / "calibration.json"
    honest = tier_sigmas(TIERS, digits_set, CalibrationCache(path), KEYED)
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    assert tier_sigmas(TIERS, digits_set, CalibrationCache(path), KEYED) == honest


def test_valid_cached_sigma_accepts_numbers_only() -> None:
    assert valid_cached_sigma(4.5, 0.65) == 4.5
    assert valid_cached_sigma(3, 0.65) == 3.0
    assert valid_cached_sigma(0.0, 1.0) == 0.0
    for bad in (0.0, None, math.nan, math.inf, 1e308, -1.0, [4.5], "4.5", True, {"s": 1}):
        assert valid_cached_sigma(bad, 0.65) is None


def test_the_server_serves_bronze_at_its_target_over_a_zero_sigma_cache(
    make_client: Any, cache_dir: Path, api_keys: dict[str, str]
) -> None:
    """σ = 0.0 in the cache used to serve bronze at gold quality with /readyz 200."""
    path = cache_dir / "calibration.json"
    with make_client():
        pass  # fills the cache
    data = json.loads(path.read_text())
    path.write_text(json.dumps({k: 0.0 for k in data}))
    from service.models import heldout

    x, _ = heldout("digits")
    images = (x[:64, 0] * 16).tolist()
    with make_client() as client:
        assert client.get("/readyz").status_code == 200

        def ask(key: str) -> list[int]:
            out: list[int] = []
            for s in range(0, 64, 4):
                r = client.post(
                    "/predict", json={"inputs": images[s : s + 4]}, headers={"X-API-Key": key}
                )
                assert r.status_code == 200, r.text
                out += [p["index"] for p in r.json()["predictions"]]
            return out

        gold, bronze = ask(api_keys["gold"]), ask(api_keys["bronze"])
    agreement = sum(a == b for a, b in zip(gold, bronze, strict=True)) / 64
    assert agreement < 0.9  # bronze is at utility 0.6, not gold
    assert json.loads(path.read_text()) != {k: 0.0 for k in data}
