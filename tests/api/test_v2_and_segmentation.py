"""Open Inference Protocol v2 on the digits service, and /predict on the digit-scenes segmenter."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from .test_predict import error_of

pytestmark = pytest.mark.unit


def test_v2_health_and_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models/digits/ready").json()["ready"] is True
    meta = client.get("/v2/models/digits").json()
    assert meta["name"] == "digits" and meta["inputs"][0]["shape"] == [-1, 1, 8, 8]
    assert {o["name"] for o in meta["outputs"]} == {"label", "index", "score"}
    assert client.get("/v2/models/resnet").status_code == 404


def _infer(client: TestClient, key: str, data: list[float], shape: list[int], **params: Any) -> Any:
    body = {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}]}
    if params:
        body["parameters"] = params
    return client.post("/v2/models/digits/infer", json=body, headers={"X-API-Key": key})


def test_v2_infer_matches_predict(
    client: TestClient, api_keys: dict[str, str], heldout_digits: tuple[list[Any], list[int]]
) -> None:
    x, _ = heldout_digits
    flat = [v for img in x[:4] for row in img for v in row]
    r = _infer(client, api_keys["gold"], flat, [4, 8, 8], tier="silver")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "digits" and body["parameters"]["tier"] == "silver"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert "logits" not in r.text and set(outputs) == {"label", "index", "score"}
    predicted = client.post(
        "/predict",
        json={"inputs": x[:4]},
        headers={"X-API-Key": api_keys["gold"], "X-AIM-Tier": "silver"},
    ).json()["predictions"]
    assert outputs["index"]["data"] == [p["index"] for p in predicted]


def test_v2_refusals_are_strings_naming_the_field(
    client: TestClient, api_keys: dict[str, str]
) -> None:
    flat = [0.0] * 64
    r = _infer(client, api_keys["gold"], flat, [2, 8, 8])
    assert r.status_code == 422 and r.json()["error"].startswith("`inputs[0].data`")
    r = _infer(client, api_keys["bronze"], flat, [1, 8, 8], tier="gold")
    assert r.status_code == 403 and isinstance(r.json()["error"], str)
    r = _infer(client, api_keys["gold"], flat, [1, 8, 8], top_k=0)
    assert r.status_code == 422 and r.json()["error"].startswith("`parameters.top_k`")
    no_key = client.post("/v2/models/digits/infer", json={"inputs": []})
    assert no_key.status_code == 401 and "API key" in no_key.json()["error"]
    unknown = client.get("/v2/models/digits/nothing-here")
    assert unknown.status_code == 404 and isinstance(unknown.json()["error"], str)
    # Outside /v2 the error keeps its object shape.
    assert isinstance(error_of(client.post("/predict", json={}))["code"], str)


SCENES_CONFIG = {
    "model": "digit-scenes",
    "tiers": {"gold": {"utility": 1.0}, "silver": {"sigma": 4.0}},
}


@pytest.fixture(scope="module")
def scenes(make_client: Any) -> Iterator[TestClient]:
    with make_client(SCENES_CONFIG) as c:
        yield c


def test_segmentation_answers_masks_and_counts(
    scenes: TestClient, api_keys: dict[str, str]
) -> None:
    from service.models import heldout

    inputs, masks = heldout("digit-scenes")
    raw = (inputs[:2, 0] * 16).tolist()
    r = scenes.post("/predict", json={"inputs": raw}, headers={"X-API-Key": api_keys["gold"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "segmentation" and len(body["predictions"]) == 2
    pred = body["predictions"][0]
    assert len(pred["mask"]) == 32 and len(pred["mask"][0]) == 32
    assert sum(pred["counts"].values()) == 32 * 32
    agree = sum(
        int(a == b)
        for ra, rb in zip(pred["mask"], masks[0].tolist(), strict=True)
        for a, b in zip(ra, rb, strict=True)
    )
    assert agree / 1024 > 0.9


def test_segmentation_focus_region_stays_inside(
    scenes: TestClient, api_keys: dict[str, str]
) -> None:
    from service.models import heldout

    raw = (heldout("digit-scenes")[0][:1, 0] * 16).tolist()
    key = {"X-API-Key": api_keys["gold"]}
    plain = scenes.post("/predict", json={"inputs": raw}, headers=key).json()["predictions"][0]
    focus = [{"class": "3", "direction": "up", "strength": 50.0, "region": [0, 0, 16, 16]}]
    r = scenes.post("/predict", json={"inputs": raw, "focus": focus}, headers=key)
    assert r.status_code == 200, r.text
    focused = r.json()["predictions"][0]
    four = 4  # label "3" is class index 4 (0 is background)
    inside = sum(row[:16].count(four) for row in focused["mask"][:16])
    assert inside > sum(row[:16].count(four) for row in plain["mask"][:16]) + 50
    assert [row[16:] for row in focused["mask"]] == [row[16:] for row in plain["mask"]]
    assert focused["mask"][16:] == plain["mask"][16:]


def test_segmentation_region_outside_the_image_is_422(
    scenes: TestClient, api_keys: dict[str, str]
) -> None:
    focus = [{"class": "3", "direction": "up", "strength": 1.0, "region": [0, 0, 40, 8]}]
    r = scenes.post(
        "/predict",
        json={"inputs": [[[0.0] * 32] * 32], "focus": focus},
        headers={"X-API-Key": api_keys["gold"]},
    )
    assert r.status_code == 422 and error_of(r)["field"] == "focus[0].region"


def test_readiness_follows_the_worker(make_client: Any) -> None:
    with make_client() as c:
        assert c.get("/readyz").status_code == 200
        state = c.app.state.aim  # type: ignore[attr-defined]
        c.portal.call(state.batcher.stop)  # type: ignore[union-attr]
        assert c.get("/readyz").json() == {"status": "stopped"}
        assert c.get("/v2/health/ready").status_code == 503


def test_the_batcher_queues_each_request_at_the_tier_it_is_served_at(
    client: TestClient, api_keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gold key lowered to bronze (X-AIM-Tier, or OIP's `parameters.tier`) queues as bronze."""
    batcher = client.app.state.aim.batcher  # type: ignore[attr-defined]
    queued: list[tuple[int, str]] = []
    submit = batcher.submit

    async def spy(item: Any, rank: int = 0, tier: str = "", receive: Any = None) -> Any:
        queued.append((rank, tier))
        return await submit(item, rank, tier, receive)

    monkeypatch.setattr(batcher, "submit", spy)
    gold = api_keys["gold"]
    image = [[0.0] * 8 for _ in range(8)]
    lowered = {"X-API-Key": gold, "X-AIM-Tier": "bronze"}
    assert client.post("/predict", json={"inputs": [image]}, headers=lowered).status_code == 200
    assert (
        client.post("/predict", json={"inputs": [image]}, headers={"X-API-Key": gold}).json()[
            "tier"
        ]
        == "gold"
    )
    r = _infer(client, gold, [0.0] * 64, [1, 8, 8], tier="bronze")
    assert r.status_code == 200 and r.json()["parameters"]["tier"] == "bronze"
    ranks = {
        name: rank
        for rank, name in enumerate(
            client.get("/model", headers={"X-API-Key": gold}).json()["tiers"]
        )
    }
    assert queued == [
        (ranks["bronze"], "bronze"),
        (ranks["gold"], "gold"),
        (ranks["bronze"], "bronze"),
    ]
