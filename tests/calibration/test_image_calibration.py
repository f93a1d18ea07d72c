"""`utility:` tiers for a user's vision model, calibrated on a folder of images (the spec's
`calibration:` field, or `aim calibrate --inputs DIR`): the agreement measured on other images,
through the server, is within 2 points of the target."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

pytestmark = pytest.mark.integration

# Enough images that the 2-point bound is a fair test: the binomial error of an agreement near
# 0.8 measured on 2,500 decisions is about 0.8 points.
N_CAL, N_TEST, BATCH = 2500, 2500, 32
TARGETS = {"silver": 0.8, "bronze": 0.6}


def _images(n: int, seed: int) -> list[bytes]:
    """Small varied PNGs: random blobs of colour at random sizes around the model's."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w, h = (int(v) for v in rng.integers(24, 64, 2))
        grid = int(rng.integers(3, 9))
        coarse = (rng.random((grid, grid, 3)) * 255).astype(np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        image.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def calibration_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("calibration-images")
    for i, data in enumerate(_images(N_CAL, seed=1)):
        (folder / f"{i:05d}.png").write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def vit(
    make_client: Any, hf_vision_dirs: dict[str, Path], calibration_folder: Path
) -> Iterator[TestClient]:
    model = {"loader": "huggingface", "path": str(hf_vision_dirs["vit"])}
    tiers = {"gold": {"utility": 1.0}} | {t: {"utility": u} for t, u in TARGETS.items()}
    config = {"model": {**model, "calibration": str(calibration_folder)}, "tiers": tiers}
    with make_client(config) as c:
        yield c


def _indices(client: TestClient, key: str, tier: str, images: list[bytes]) -> list[int]:
    out: list[int] = []
    for i in range(0, len(images), BATCH):
        inputs = [{"image_b64": base64.b64encode(d).decode()} for d in images[i : i + BATCH]]
        r = client.post(
            "/predict", json={"inputs": inputs}, headers={"X-API-Key": key, "X-AIM-Tier": tier}
        )
        assert r.status_code == 200, r.text
        out += [p["index"] for p in r.json()["predictions"]]
    return out


def test_measured_agreement_on_other_images_is_within_2_points(
    vit: TestClient, api_keys: dict[str, str]
) -> None:
    images = _images(N_TEST, seed=2)  # not the calibration images
    key = api_keys["gold"]
    gold = np.array(_indices(vit, key, "gold", images))
    assert len(set(gold.tolist())) > 1  # the model does not answer one class for everything
    for tier, target in TARGETS.items():
        served = np.array(_indices(vit, key, tier, images))
        agreement = float((served == gold).mean())
        print(f"{tier}: target {target}, measured agreement {agreement:.4f}")  # shown with -s
        assert abs(agreement - target) <= 0.02, (tier, target, agreement)


def test_aim_calibrate_reads_a_folder_of_images(
    hf_vision_dirs: dict[str, Path], calibration_folder: Path, tmp_path: Path
) -> None:
    from service.cli.main import main

    out = tmp_path / "sigmas.json"
    model = str(hf_vision_dirs["vit"])
    args = ["calibrate", "--model", model, "--targets", "0.8", "--inputs", str(calibration_folder)]
    assert main([*args, "--out", str(out)]) == 0
    (result,) = json.loads(out.read_text())
    assert result["target"] == 0.8 and result["sigma"] > 0
    assert abs(result["predicted_agreement"] - 0.8) < 1e-3


def test_a_folder_without_images_is_named(
    make_client: Any, hf_vision_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from service.calibration.data import image_folder_inputs
    from service.models import InputError, load_model

    with pytest.raises(InputError, match=r"has no \.png"):
        image_folder_inputs(tmp_path, load_model(hf_vision_dirs["vit"]))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"broken\.png"):
        image_folder_inputs(tmp_path, load_model(hf_vision_dirs["vit"]))
