"""`POST /predict` on the digits service, in process: answers, tiers, and every kind of refusal."""

from __future__ import annotations

import base64
import io
import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.unit

ZERO = [[0.0] * 8 for _ in range(8)]


def post(client: TestClient, key: str | None, body: Any, **headers: str) -> Any:
    h = {"X-API-Key": key} if key else {}
    h.update(headers)
    return client.post("/predict", json=body, headers=h)


def error_of(r: Any) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}, body
    return body["error"]  # type: ignore[no-any-return]


# --- answers --------------------------------------------------------------------------------


def test_gold_answers_with_labels_and_never_logits(
    client: TestClient, api_keys: dict[str, str], heldout_digits: tuple[list[Any], list[int]]
) -> None:
    x, y = heldout_digits
    r = post(client, api_keys["gold"], {"inputs": x[:5], "top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "digits" and body["tier"] == "gold" and body["task"] == "classification"
    assert len(body["predictions"]) == 5
    for p, label in zip(body["predictions"], y[:5], strict=True):
        assert set(p) == {"label", "index", "score", "top_k"}
        assert len(p["top_k"]) == 3 and p["top_k"][0]["index"] == p["index"]
        assert p["label"] == str(label)
        assert 0.0 <= p["score"] <= 1.0
    assert "logits" not in r.text


def test_gold_accuracy_equals_clean_model(
    client: TestClient, api_keys: dict[str, str], heldout_digits: tuple[list[Any], list[int]]
) -> None:
    import torch

    from service.models import heldout, load_model

    x, y = heldout_digits
    preds: list[int] = []
    for i in range(0, len(x), 64):
        r = post(client, api_keys["gold"], {"inputs": x[i : i + 64]}, **{"X-AIM-Tier": "gold"})
        assert r.status_code == 200, r.text
        preds += [p["index"] for p in r.json()["predictions"]]
    model = load_model("digits")
    inputs, labels = heldout("digits")
    clean = model.forward(inputs).argmax(1)
    assert preds == clean.tolist()
    assert sum(p == t for p, t in zip(preds, y, strict=True)) / len(y) == pytest.approx(
        float((clean == labels).float().mean())
    )
    assert torch.equal(labels, torch.tensor(y))


def test_keyed_answers_repeat_exactly(client: TestClient, api_keys: dict[str, str]) -> None:
    from service.models.data import digits_splits

    x = [img.tolist() for img in digits_splits().heldout[0][:32]]
    first = post(client, api_keys["silver"], {"inputs": x}).json()
    second = post(client, api_keys["silver"], {"inputs": x}).json()
    assert first == second
    gold = post(client, api_keys["gold"], {"inputs": x}).json()
    scores = [p["score"] for p in first["predictions"]]
    assert scores != [p["score"] for p in gold["predictions"]], "silver must be modulated"


def test_bearer_header_and_lowering_the_tier(client: TestClient, api_keys: dict[str, str]) -> None:
    r = client.post(
        "/predict",
        json={"inputs": [ZERO]},
        headers={"Authorization": f"Bearer {api_keys['gold']}", "X-AIM-Tier": "bronze"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["tier"] == "bronze"


def test_image_input(client: TestClient, api_keys: dict[str, str]) -> None:
    from PIL import Image

    img = Image.new("L", (8, 8), 0)
    for i in range(2, 6):
        img.putpixel((3, i), 255)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    r = post(client, api_keys["gold"], {"inputs": [{"image_b64": b64}, ZERO]})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 2


def test_focus_up_moves_predictions_toward_the_class(
    client: TestClient, api_keys: dict[str, str], heldout_digits: tuple[list[Any], list[int]]
) -> None:
    x, _ = heldout_digits
    plain = post(client, api_keys["gold"], {"inputs": x[:64]}).json()["predictions"]
    body = {"inputs": x[:64], "focus": [{"class": "3", "direction": "up", "strength": 30.0}]}
    focused = post(client, api_keys["gold"], body).json()["predictions"]
    assert sum(p["label"] == "3" for p in focused) > sum(p["label"] == "3" for p in plain) + 10


# --- refusals -------------------------------------------------------------------------------


def test_missing_and_unknown_keys_are_401(client: TestClient) -> None:
    for key in (None, "aim_not-a-key"):
        r = post(client, key, {"inputs": [ZERO]})
        assert r.status_code == 401
        assert error_of(r)["field"] == "X-API-Key"


def test_the_key_and_the_queue_are_checked_before_the_body_is_read(
    make_client: Any, api_keys: dict[str, str]
) -> None:
    bad = {"content": b"not json", "headers": {"Content-Type": "application/json"}}
    with make_client() as c:
        for path in ("/predict", "/v2/models/digits/infer"):
            assert c.post(path, **bad).status_code == 401
        c.portal.call(c.app.state.aim.batcher.stop)  # type: ignore[attr-defined]
        key = {"X-API-Key": api_keys["gold"], "Content-Type": "application/json"}
        for path in ("/predict", "/v2/models/digits/infer"):
            r = c.post(path, content=b"not json", headers=key)
            assert r.status_code == 503, r.text  # refused before parsing, not 422


def test_raising_the_tier_is_403(client: TestClient, api_keys: dict[str, str]) -> None:
    r = post(client, api_keys["bronze"], {"inputs": [ZERO]}, **{"X-AIM-Tier": "gold"})
    assert r.status_code == 403
    assert error_of(r)["field"] == "X-AIM-Tier"


def test_unknown_tier_is_422(client: TestClient, api_keys: dict[str, str]) -> None:
    r = post(client, api_keys["gold"], {"inputs": [ZERO]}, **{"X-AIM-Tier": "platinum"})
    assert r.status_code == 422
    assert error_of(r)["field"] == "X-AIM-Tier"


def test_focus_not_in_tier_is_403(client: TestClient, api_keys: dict[str, str]) -> None:
    body = {"inputs": [ZERO], "focus": [{"class": "3", "direction": "up", "strength": 1.0}]}
    r = post(client, api_keys["bronze"], body)
    assert r.status_code == 403
    assert error_of(r)["field"] == "focus"


def test_too_many_items_for_the_tier_is_413(client: TestClient, api_keys: dict[str, str]) -> None:
    r = post(client, api_keys["bronze"], {"inputs": [ZERO] * 5})
    assert r.status_code == 413
    assert error_of(r)["field"] == "inputs"


def test_body_over_the_limit_is_413(client: TestClient, api_keys: dict[str, str]) -> None:
    r = client.post(
        "/predict",
        content=b"[" + b"0," * (3 * 1024 * 1024) + b"0]",
        headers={"X-API-Key": api_keys["gold"], "Content-Type": "application/json"},
    )
    assert r.status_code == 413


def test_rate_limit_is_429_with_retry_after(client: TestClient, api_keys: dict[str, str]) -> None:
    statuses = [post(client, api_keys["trial"], {"inputs": [ZERO]}) for _ in range(4)]
    limited = [r for r in statuses if r.status_code == 429]
    assert statuses[0].status_code == 200
    assert limited, [r.status_code for r in statuses]
    assert int(limited[0].headers["Retry-After"]) >= 1


def test_wrong_content_type_is_415(client: TestClient, api_keys: dict[str, str]) -> None:
    r = client.post(
        "/predict",
        content=b"inputs=1",
        headers={"X-API-Key": api_keys["gold"], "Content-Type": "text/plain"},
    )
    assert r.status_code == 415
    assert error_of(r)["field"] == "Content-Type"


BAD_BODIES: list[tuple[str, Any, str]] = [
    ("malformed json", b'{"inputs": [', "body"),
    ("empty body", b"", "body"),
    ("not an object", b"[1, 2]", "body"),
    ("missing inputs", {"top_k": 1}, "inputs"),
    ("empty inputs", {"inputs": []}, "inputs"),
    ("wrong shape", {"inputs": [[[0.0] * 7] * 8]}, "inputs[0]"),
    ("second item bad", {"inputs": [ZERO, [[1.0] * 8] * 3]}, "inputs[1]"),
    ("ragged", {"inputs": [[[0.0] * 8] * 7 + [[0.0] * 3]]}, "inputs[0]"),
    ("strings", {"inputs": [[["a"] * 8] * 8]}, "inputs[0]"),
    ("booleans", {"inputs": [[[True] * 8] * 8]}, "inputs[0]"),
    ("nan", b'{"inputs": [[[NaN,0,0,0,0,0,0,0]' + b",[0,0,0,0,0,0,0,0]" * 7 + b"]]}", "inputs[0]"),
    ("huge", {"inputs": [[[1e300] * 8] * 8]}, "inputs[0]"),
    ("out of range", {"inputs": [[[-5.0] * 8] * 8]}, "inputs[0]"),
    ("scalar", {"inputs": [3]}, "inputs[0]"),
    ("top_k zero", {"inputs": [ZERO], "top_k": 0}, "top_k"),
    ("top_k too big", {"inputs": [ZERO], "top_k": 11}, "top_k"),
    ("unknown field", {"inputs": [ZERO], "temperature": 1}, "temperature"),
    (
        "unknown class",
        {"inputs": [ZERO], "focus": [{"class": "cat", "direction": "up", "strength": 1}]},
        "focus[0].class",
    ),
    (
        "class index out of range",
        {"inputs": [ZERO], "focus": [{"class": 10, "direction": "up", "strength": 1}]},
        "focus[0].class",
    ),
    (
        "bad direction",
        {"inputs": [ZERO], "focus": [{"class": "3", "direction": "left", "strength": 1}]},
        "focus[0].direction",
    ),
    (
        "negative strength",
        {"inputs": [ZERO], "focus": [{"class": "3", "direction": "up", "strength": -1}]},
        "focus[0].strength",
    ),
    (
        "region on a classifier",
        {
            "inputs": [ZERO],
            "focus": [{"class": "3", "direction": "up", "strength": 1, "region": [0, 0, 2, 2]}],
        },
        "focus[0].region",
    ),
    ("base64 garbage", {"inputs": [{"image_b64": "not base64!!"}]}, "inputs[0].image_b64"),
    (
        "not an image",
        {"inputs": [{"image_b64": base64.b64encode(b"hello, world").decode()}]},
        "inputs[0].image_b64",
    ),
    ("image object with extra field", {"inputs": [{"image_b64": "", "x": 1}]}, "inputs[0]"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_input_is_4xx_naming_the_field(
    client: TestClient, api_keys: dict[str, str], case: str, body: Any, field: str
) -> None:
    headers = {"X-API-Key": api_keys["gold"], "Content-Type": "application/json"}
    if isinstance(body, bytes):
        r = client.post("/predict", content=body, headers=headers)
    else:
        r = client.post("/predict", json=body, headers=headers)
    assert r.status_code == 422, (case, r.status_code, r.text)
    err = error_of(r)
    # The field may be more precise than the item, e.g. inputs[0][7] for a ragged row.
    assert err["field"] == field or err["field"].startswith(field + "["), (case, err)
    assert err["message"]
    # ...and the server keeps serving.
    assert post(client, api_keys["gold"], {"inputs": [ZERO]}).status_code == 200


def test_keys_never_reach_logs_or_metrics(
    client: TestClient, api_keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    from service.access.keys import hash_key

    with caplog.at_level(logging.DEBUG):
        post(client, api_keys["silver"], {"inputs": [ZERO]})
        post(client, api_keys["silver"], {"inputs": "bad"})
    text = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    metrics = client.get("/metrics").text
    for secret in (api_keys["silver"], hash_key(api_keys["silver"])):
        assert secret not in text
        assert secret not in metrics
    assert 'aim_requests_total{route="/predict",status="200",tier="silver"}' in metrics
