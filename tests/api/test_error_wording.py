"""What a client reads when a request is refused: JSON's words (null, true, "text"), not
Python's; a ragged array reported as ragged; a data URL accepted; two different keys refused."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.unit

ZERO = [[0.0] * 8 for _ in range(8)]


def _with(value: Any) -> list[list[Any]]:
    rows = [list(r) for r in ZERO]
    rows[0][0] = value
    return rows


def _message(client: TestClient, key: str, body: Any) -> tuple[str, str]:
    r = client.post("/predict", json=body, headers={"X-API-Key": key})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    return error["field"], error["message"]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"inputs": [_with(None)]}, "inputs[0][0][0]", "is null, expected a number"),
        ({"inputs": [_with(True)]}, "inputs[0][0][0]", "is a boolean (true), expected a number"),
        ({"inputs": [_with("3")]}, "inputs[0][0][0]", 'is "3", expected a number'),
        ({"inputs": [ZERO], "top_k": 2.5}, "top_k", "should be a whole number, got 2.5"),
        ({"inputs": [ZERO], "top_k": "x"}, "top_k", 'should be an integer, got "x"'),
        ({"inputs": None}, "inputs", "should be an array, got null"),
        (
            {"inputs": [ZERO], "focus": [{"class": "3", "direction": "up", "strength": None}]},
            "focus[0].strength",
            "should be a number, got null",
        ),
    ],
)
def test_422_messages_speak_json(
    client: TestClient, api_keys: dict[str, str], body: Any, field: str, message: str
) -> None:
    got_field, got = _message(client, api_keys["gold"], body)
    assert got_field == field
    assert got == f"`{field}`: {message}"
    for python in ("None", "True", "False", "Input should", "'"):
        assert python not in got, f"{python!r} in {got!r}"


def test_ragged_array_is_reported_as_ragged(client: TestClient, api_keys: dict[str, str]) -> None:
    # The first row is short: its length is no shape of the array, there is none.
    field, message = _message(client, api_keys["gold"], {"inputs": [[[0.0, 0.0], *ZERO[1:]]]})
    assert field == "inputs[0][1]"
    assert "ragged" in message and "row [0] has length 2" in message
    assert "(8, 2)" not in message
    # A short last row: the expected length is known from the rows before it.
    field, message = _message(client, api_keys["gold"], {"inputs": [[*ZERO[:7], [0.0] * 7]]})
    assert (field, message) == ("inputs[0][7]", "`inputs[0][7]`: has length 7, expected 8")


def _png_b64() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8), 0).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_data_url_prefix_is_accepted(client: TestClient, api_keys: dict[str, str]) -> None:
    plain = {"inputs": [{"image_b64": _png_b64()}]}
    data_url = {"inputs": [{"image_b64": "data:image/png;base64," + _png_b64()}]}
    headers = {"X-API-Key": api_keys["gold"]}
    a = client.post("/predict", json=plain, headers=headers)
    b = client.post("/predict", json=data_url, headers=headers)
    assert a.status_code == b.status_code == 200, b.text
    assert a.json() == b.json()
    field, message = _message(
        client, api_keys["gold"], {"inputs": [{"image_b64": "data:image/png," + _png_b64()}]}
    )
    assert field == "inputs[0].image_b64" and ";base64," in message


def test_bad_base64_says_what_to_send(client: TestClient, api_keys: dict[str, str]) -> None:
    _, message = _message(client, api_keys["gold"], {"inputs": [{"image_b64": "not base64!!"}]})
    assert "not valid base64" in message and "PNG or JPEG" in message


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/predict", {"inputs": [ZERO]}),
        ("GET", "/model", None),
        (
            "POST",
            "/v2/models/digits/infer",
            {
                "inputs": [
                    {"name": "input", "shape": [1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}
                ]
            },
        ),
    ],
)
def test_two_different_keys_are_refused_naming_both_headers(
    client: TestClient, api_keys: dict[str, str], method: str, path: str, body: Any
) -> None:
    both = {"X-API-Key": api_keys["bronze"], "Authorization": f"Bearer {api_keys['gold']}"}
    r = client.request(method, path, json=body, headers=both)
    assert r.status_code == 400, r.text
    text = r.text
    assert "X-API-Key" in text and "Authorization: Bearer" in text
    # The same key in both headers is one key, and is served.
    same = {"X-API-Key": api_keys["gold"], "Authorization": f"Bearer {api_keys['gold']}"}
    assert client.request(method, path, json=body, headers=same).status_code == 200
