"""Hugging Face vision directories served with `model: {loader: huggingface, path: DIR}` alone:
gold answers equal transformers' own, masks at the image's size, raw image bodies."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

pytestmark = pytest.mark.unit

TIERS = {"gold": {"utility": 1.0}, "silver": {"sigma": 2.0}}


def _config(path: Path) -> dict[str, Any]:
    return {"model": {"loader": "huggingface", "path": str(path)}, "tiers": TIERS}


@pytest.fixture(scope="module")
def vit(make_client: Any, hf_vision_dirs: dict[str, Path]) -> Iterator[TestClient]:
    with make_client(_config(hf_vision_dirs["vit"])) as c:
        yield c


@pytest.fixture(scope="module")
def segformer(make_client: Any, hf_vision_dirs: dict[str, Path]) -> Iterator[TestClient]:
    with make_client(_config(hf_vision_dirs["segformer"])) as c:
        yield c


def _reference(directory: Path, images: list[bytes]) -> tuple[Any, Any]:
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageClassification,
        AutoModelForSemanticSegmentation,
    )

    processor = AutoImageProcessor.from_pretrained(directory)
    pil = [Image.open(io.BytesIO(d)).convert("RGB") for d in images]
    pixels = processor(pil, return_tensors="pt")["pixel_values"]
    seg = "segformer" in directory.name
    auto = AutoModelForSemanticSegmentation if seg else AutoModelForImageClassification
    with torch.no_grad():
        out = auto.from_pretrained(directory).eval()(pixel_values=pixels)
    if seg:
        sizes = [(im.height, im.width) for im in pil]
        return processor.post_process_semantic_segmentation(out, target_sizes=sizes), None
    return out.logits.argmax(dim=1).tolist(), out.logits


def _b64(data: bytes) -> dict[str, str]:
    return {"image_b64": base64.b64encode(data).decode()}


def test_vit_gold_labels_equal_transformers(
    vit: TestClient,
    api_keys: dict[str, str],
    hf_vision_dirs: dict[str, Path],
    photo: Callable[..., bytes],
) -> None:
    images = [photo(w, h, seed=i) for i, (w, h) in enumerate([(500, 375), (64, 200), (40, 40)])]
    r = vit.post(
        "/predict",
        json={"inputs": [_b64(d) for d in images]},
        headers={"X-API-Key": api_keys["gold"]},
    )
    assert r.status_code == 200, r.text
    want, _ = _reference(hf_vision_dirs["vit"], images)
    assert [p["index"] for p in r.json()["predictions"]] == want
    info = vit.get("/model", headers={"X-API-Key": api_keys["gold"]}).json()
    assert info["task"] == "classification" and len(info["labels"]) == 10


def test_raw_jpeg_body_answers_as_the_json_body(
    vit: TestClient, api_keys: dict[str, str], photo: Callable[..., bytes]
) -> None:
    data = photo(320, 240, seed=7)
    for tier in ("gold", "silver"):
        json_answer = vit.post(
            "/predict",
            json={"inputs": [_b64(data)], "top_k": 2},
            headers={"X-API-Key": api_keys["gold"], "X-AIM-Tier": tier},
        )
        raw = vit.post(
            f"/predict?top_k=2&tier={tier}",
            content=data,
            headers={"X-API-Key": api_keys["gold"], "Content-Type": "image/jpeg"},
        )
        assert raw.status_code == 200, raw.text
        assert raw.json() == json_answer.json()
    png = photo(50, 60, seed=3, fmt="PNG")
    header = vit.post(
        "/predict",
        content=png,
        headers={"X-API-Key": api_keys["gold"], "Content-Type": "image/png", "X-AIM-Top-K": "4"},
    )
    assert header.status_code == 200 and len(header.json()["predictions"][0]["top_k"]) == 4


def test_raw_body_refusals_name_the_field(vit: TestClient, api_keys: dict[str, str]) -> None:
    key = {"X-API-Key": api_keys["gold"], "Content-Type": "image/jpeg"}
    cases = [
        ("/predict", b"not an image", "body"),
        ("/predict", b"", "body"),
        ("/predict?top_k=zero", b"x", "top_k"),
        ("/predict?focus=[{}]", b"x", "focus[0].direction"),
        ("/predict?focus=nope", b"x", "focus"),
    ]
    for url, body, field in cases:
        r = vit.post(url, content=body, headers=key)
        assert r.status_code == 422, (url, r.text)
        assert r.json()["error"]["field"] == field
    bronze = vit.post("/predict?tier=gold", content=b"x", headers={**key, "X-API-Key": "nope"})
    assert bronze.status_code == 401


def test_segformer_masks_at_the_image_size_equal_transformers(
    segformer: TestClient,
    api_keys: dict[str, str],
    hf_vision_dirs: dict[str, Path],
    photo: Callable[..., bytes],
) -> None:
    data = photo(640, 480, seed=11)
    r = segformer.post(
        "/predict",
        content=data,
        headers={"X-API-Key": api_keys["gold"], "Content-Type": "image/jpeg"},
    )
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    mask = pred["mask"]
    assert len(mask) == 480 and all(len(row) == 640 for row in mask)
    assert sum(pred["counts"].values()) == 640 * 480
    want, _ = _reference(hf_vision_dirs["segformer"], [data])
    assert torch.equal(torch.tensor(mask), want[0])
    noisy = segformer.post(
        "/predict",
        json={"inputs": [_b64(data)]},
        headers={"X-API-Key": api_keys["gold"], "X-AIM-Tier": "silver"},
    ).json()["predictions"][0]["mask"]
    assert len(noisy) == 480 and noisy != mask


def test_oip_bytes_tensors_carry_encoded_images(
    vit: TestClient, api_keys: dict[str, str], photo: Callable[..., bytes]
) -> None:
    images = [photo(200, 150, seed=20), photo(90, 120, seed=21, fmt="PNG")]
    key = {"X-API-Key": api_keys["gold"]}
    want = vit.post("/predict", json={"inputs": [_b64(d) for d in images]}, headers=key).json()
    indices = [p["index"] for p in want["predictions"]]
    url = f"/v2/models/{want['model']}/infer"
    tensor = {"name": "image", "shape": [2], "datatype": "BYTES"}
    as_json = vit.post(
        url,
        json={"inputs": [{**tensor, "data": [_b64(d)["image_b64"] for d in images]}]},
        headers=key,
    )
    assert as_json.status_code == 200, as_json.text
    outputs = {o["name"]: o["data"] for o in as_json.json()["outputs"]}
    assert outputs["index"] == indices
    binary = b"".join(len(d).to_bytes(4, "little") + d for d in images)
    header = json.dumps(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": len(binary)}}]}
    ).encode()
    r = vit.post(
        url,
        content=header + binary,
        headers={**key, "Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200, r.text
    assert {o["name"]: o["data"] for o in r.json()["outputs"]}["index"] == indices
    bad = vit.post(url, json={"inputs": [{**tensor, "shape": [1], "data": ["%%"]}]}, headers=key)
    assert bad.status_code == 422 and bad.json()["error"].startswith("`inputs[0].data[0]`")


def test_segformer_refuses_a_focus_region_by_name(
    segformer: TestClient, api_keys: dict[str, str], photo: Callable[..., bytes]
) -> None:
    focus = [{"class": 1, "direction": "up", "strength": 2.0, "region": [0, 0, 90, 90]}]
    r = segformer.post(
        "/predict",
        json={"inputs": [_b64(photo(96, 96))], "focus": focus},
        headers={"X-API-Key": api_keys["gold"]},
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "focus[0].region"
    whole = [{"class": 1, "direction": "up", "strength": 50.0}]
    r = segformer.post(
        "/predict",
        json={"inputs": [_b64(photo(96, 96))], "focus": whole},
        headers={"X-API-Key": api_keys["gold"]},
    )
    assert r.status_code == 200 and set(r.json()["predictions"][0]["counts"]) == {"LABEL_1"}
