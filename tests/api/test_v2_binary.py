"""OIP v2 binary tensor extension, requested outputs, versions and string errors, in-process."""

from __future__ import annotations

import gzip
import struct
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from service.api.routes.v2_codec import OutputTensor, encode_response

pytestmark = pytest.mark.unit

URL = "/v2/models/digits/infer"


def _images(heldout_digits: tuple[list[Any], list[int]], n: int) -> np.ndarray:
    return np.asarray(heldout_digits[0][:n], dtype=np.float32)


def _binary_body(x: np.ndarray, datatype: str = "FP32", **request: Any) -> tuple[bytes, int]:
    raw = x.tobytes()
    header = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        **request,
    }
    head = orjson.dumps(header)
    return head + raw, len(head)


def _post_binary(
    client: TestClient, key: str, body: bytes, length: int | None, **headers: str
) -> Any:
    sent = {"X-API-Key": key, "Content-Type": "application/octet-stream", **headers}
    if length is not None:
        sent["Inference-Header-Content-Length"] = str(length)
    return client.post(URL, content=body, headers=sent)


def _split_answer(r: Any) -> tuple[dict[str, Any], bytes]:
    n = int(r.headers["inference-header-content-length"])
    return orjson.loads(r.content[:n]), r.content[n:]


def _predicted(client: TestClient, key: str, x: np.ndarray) -> list[dict[str, Any]]:
    r = client.post("/predict", json={"inputs": x.tolist()}, headers={"X-API-Key": key})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]  # type: ignore[no-any-return]


def test_binary_request_and_binary_outputs_match_predict(
    client: TestClient, api_keys: dict[str, str], heldout_digits: Any
) -> None:
    x = _images(heldout_digits, 5)
    body, length = _binary_body(
        x, id="b-1", parameters={"binary_data_output": True}, outputs=[{"name": "index"}]
    )
    r = _post_binary(client, api_keys["gold"], body, length)
    assert r.status_code == 200, r.text
    header, tail = _split_answer(r)
    assert header["id"] == "b-1" and [o["name"] for o in header["outputs"]] == ["index"]
    (index,) = header["outputs"]
    assert index["parameters"]["binary_data_size"] == len(tail) == 5 * 8 and "data" not in index
    got = np.frombuffer(tail, dtype="<i8").tolist()
    assert got == [p["index"] for p in _predicted(client, api_keys["gold"], x)]


def test_binary_bytes_output_is_length_prefixed(
    client: TestClient, api_keys: dict[str, str], heldout_digits: Any
) -> None:
    x = _images(heldout_digits, 3)
    outputs = [{"name": "label", "parameters": {"binary_data": True}}, {"name": "score"}]
    body, length = _binary_body(x, outputs=outputs)
    r = _post_binary(client, api_keys["gold"], body, length)
    header, tail = _split_answer(r)
    label, score = header["outputs"]
    assert "data" not in label and len(score["data"]) == 3  # per-output choice
    labels, at = [], 0
    while at < len(tail):
        (n,) = struct.unpack_from("<I", tail, at)
        labels.append(tail[at + 4 : at + 4 + n].decode())
        at += 4 + n
    assert labels == [p["label"] for p in _predicted(client, api_keys["gold"], x)]


def test_gzip_body_and_version_route(
    client: TestClient, api_keys: dict[str, str], heldout_digits: Any
) -> None:
    x = _images(heldout_digits, 2)
    body, length = _binary_body(x.astype(np.float64), datatype="FP64")
    r = client.post(
        "/v2/models/digits/versions/1/infer",
        content=gzip.compress(body),
        headers={
            "X-API-Key": api_keys["gold"],
            "Content-Encoding": "gzip",
            "Inference-Header-Content-Length": str(length),
        },
    )
    assert r.status_code == 200, r.text
    assert "id" not in r.json()  # none given, none echoed (never a null)
    wrong = client.post(
        "/v2/models/digits/versions/7/infer", content=body, headers={"X-API-Key": api_keys["gold"]}
    )
    assert wrong.status_code == 404 and "version" in wrong.json()["error"]
    assert client.get("/v2/models/digits/versions/1").json()["versions"] == ["1"]
    assert client.get("/v2/models/digits/versions/1/ready").json()["ready"] is True


@pytest.mark.parametrize(
    ("change", "status", "named"),
    [
        ("no_header", 422, "Inference-Header-Content-Length"),
        ("bad_header", 422, "Inference-Header-Content-Length"),
        ("short_data", 422, "binary_data_size"),
        ("bf16", 422, "datatype"),
        ("brotli", 415, "Content-Encoding"),
    ],
)
def test_binary_refusals_say_what_is_wrong(
    client: TestClient,
    api_keys: dict[str, str],
    heldout_digits: Any,
    change: str,
    status: int,
    named: str,
) -> None:
    x = _images(heldout_digits, 1)
    body, length = _binary_body(x, datatype="BF16" if change == "bf16" else "FP32")
    headers = {"Content-Encoding": "br"} if change == "brotli" else {}
    sent: int | None = {"no_header": None, "bad_header": len(body) + 9}.get(change, length)
    if change == "short_data":
        body = body[:-4]
    r = _post_binary(client, api_keys["gold"], body, sent, **headers)
    assert r.status_code == status, r.text
    message = r.json()["error"]
    assert isinstance(message, str) and named in message and "not valid JSON" not in message


def test_unknown_output_and_kserve_fields(client: TestClient, api_keys: dict[str, str]) -> None:
    tensor = {
        "name": "input",
        "shape": [1, 8, 8],
        "datatype": "FP32",
        "data": [0.0] * 64,
        "parameters": {"content_type": "np"},
    }
    body = {"model_name": "digits", "model_version": "1", "id": "k", "inputs": [tensor]}
    key = {"X-API-Key": api_keys["gold"]}
    r = client.post(URL, json=body, headers=key)
    assert r.status_code == 200 and r.json()["id"] == "k", r.text
    r = client.post(URL, json={**body, "outputs": [{"name": "logits"}]}, headers=key)
    assert r.status_code == 422 and r.json()["error"].startswith("`outputs[0].name`")
    r = client.post(URL, json={**body, "model_name": "resnet"}, headers=key)
    assert r.status_code == 422 and "model_name" in r.json()["error"]


def test_focus_as_a_json_string_parameter(
    client: TestClient, api_keys: dict[str, str], heldout_digits: Any
) -> None:
    # OIP parameters are scalars: focus may come as the JSON text of the list.
    x = _images(heldout_digits, 8)
    focus = [{"class": "all", "direction": "up", "strength": 0.0}]
    tensor = {"name": "input", "shape": [8, 8, 8], "datatype": "FP32", "data": x.ravel().tolist()}
    for value in (focus, orjson.dumps(focus).decode()):
        r = client.post(
            URL,
            json={"inputs": [tensor], "parameters": {"focus": value}},
            headers={"X-API-Key": api_keys["gold"]},
        )
        assert r.status_code == 200, r.text
    bad = client.post(
        URL,
        json={"inputs": [tensor], "parameters": {"focus": "[{"}},
        headers={"X-API-Key": api_keys["gold"]},
    )
    assert bad.status_code == 422 and "parameters.focus" in bad.json()["error"]


def test_encode_response_without_binary_is_plain_json() -> None:
    out = OutputTensor("index", "INT64", [2], [3, 4])
    content, length = encode_response({"model_name": "m"}, [(out, False)])
    assert length is None and orjson.loads(content)["outputs"][0]["data"] == [3, 4]


class _Raw:
    """What tritonclient's error parser reads of a response: a status and the body."""

    def __init__(self, r: Any) -> None:
        self.status_code, self._body = r.status_code, r.content

    def read(self) -> bytes:
        return self._body


def test_a_full_queue_is_a_503_tritonclient_can_print(
    client: TestClient, api_keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tritonclient.http._utils import _get_error

    from service.errors import Unavailable

    runtime = client.app.state.aim.runtime  # type: ignore[attr-defined]

    def full(*_args: Any) -> None:
        raise Unavailable("the request queue is full, try again shortly")

    monkeypatch.setattr(runtime, "check_capacity", full)
    body, length = _binary_body(np.zeros((1, 8, 8), dtype=np.float32))
    r = _post_binary(client, api_keys["gold"], body, length)
    assert r.status_code == 503
    assert str(_get_error(_Raw(r))) == "[503] the request queue is full, try again shortly"
