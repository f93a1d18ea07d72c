"""OIP v2 with the clients people use: Triton's `tritonclient[http]` and KServe's
`InferenceRESTClient`, against a live `aim serve`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from tritonclient.utils import InferenceServerException

from service.access.keys import create_key

from .conftest import LiveServer, start_server, stop_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    from service.models.data import digits_splits

    return np.asarray(digits_splits().heldout[0][:6], dtype=np.float32)


@pytest.fixture(scope="module")
def triton_client(live_server: LiveServer) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(live_server.url.removeprefix("http://"))
    yield client
    client.close()


def _predict(server: LiveServer, key: str, x: np.ndarray, tier: str | None = None) -> list[Any]:
    headers = {"X-API-Key": key, **({"X-AIM-Tier": tier} if tier else {})}
    r = httpx.post(server.url + "/predict", json={"inputs": x.tolist()}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["predictions"]  # type: ignore[no-any-return]


def _input(x: np.ndarray, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def test_triton_health_and_metadata(triton_client: triton.InferenceServerClient) -> None:
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready("digits") and triton_client.is_model_ready("digits", "1")
    assert not triton_client.is_model_ready("digits", "2")
    assert "binary_tensor_data" in triton_client.get_server_metadata()["extensions"]
    meta = triton_client.get_model_metadata("digits", model_version="1")
    assert meta["inputs"][0]["shape"] == [-1, 1, 8, 8]
    assert [o["name"] for o in meta["outputs"]] == ["label", "index", "score"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_triton_infers_json_and_binary(
    triton_client: triton.InferenceServerClient,
    live_server: LiveServer,
    images: np.ndarray,
    binary: bool,
) -> None:
    key = live_server.keys["gold"][1]
    outputs = [
        triton.InferRequestedOutput("index", binary_data=binary),
        triton.InferRequestedOutput("label", binary_data=binary),
    ]
    result = triton_client.infer(
        "digits",
        [_input(images, binary)],
        outputs=outputs,
        request_id="req-42",
        headers={"X-API-Key": key},
        parameters={"tier": "silver"},
    )
    response = result.get_response()
    assert response["id"] == "req-42" and response["parameters"]["tier"] == "silver"
    assert result.get_output("score") is None  # not asked for, not sent
    expected = _predict(live_server, key, images, tier="silver")
    assert result.as_numpy("index").tolist() == [p["index"] for p in expected]
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")]
    assert labels == [p["label"] for p in expected]


def test_triton_default_outputs_come_back_binary_and_gzip_is_taken(
    triton_client: triton.InferenceServerClient, live_server: LiveServer, images: np.ndarray
) -> None:
    key = live_server.keys["gold"][2]
    # No outputs named: tritonclient asks for every output as binary (`binary_data_output`).
    result = triton_client.infer(
        "digits",
        [_input(images, True)],
        headers={"X-API-Key": key},
        request_compression_algorithm="gzip",
    )
    assert {o["name"] for o in result.get_response()["outputs"]} == {"label", "index", "score"}
    scores = result.as_numpy("score")
    assert scores.dtype == np.float32 and scores.shape == (len(images),)
    assert result.as_numpy("index").tolist() == [
        p["index"] for p in _predict(live_server, key, images)
    ]


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Digits with a tier of one request a minute, for a real 429."""
    tmp = tmp_path_factory.mktemp("oip-limited")
    config = {
        "model": "digits",
        "tiers": {"gold": {"utility": 1.0}, "trial": {"sigma": 4.0, "rate_limit": "1/m"}},
    }
    keys_file = tmp / "keys.yaml"
    keys = {t: [create_key(Path(keys_file), t, f"oip-{t}")[1]] for t in ("gold", "trial")}
    server = start_server(tmp, config, keys_file)
    server.keys = keys
    yield server
    stop_server(server)


def test_triton_prints_every_error_with_its_status(
    triton_client: triton.InferenceServerClient,
    live_server: LiveServer,
    limited_server: LiveServer,
    images: np.ndarray,
) -> None:
    def error_of(client: triton.InferenceServerClient, **kwargs: Any) -> str:
        call = {"model_name": "digits", "inputs": [_input(images, True)], **kwargs}
        with pytest.raises(InferenceServerException) as info:
            client.infer(**call)
        return str(info.value)

    bronze, gold = live_server.keys["bronze"][0], live_server.keys["gold"][0]
    assert error_of(triton_client, headers={"X-API-Key": "aim_nope"}).startswith("[401] ")
    forbidden = error_of(triton_client, headers={"X-API-Key": bronze, "X-AIM-Tier": "gold"})
    assert forbidden.startswith("[403] ") and "gold" in forbidden
    missing = error_of(triton_client, model_name="resnet", headers={"X-API-Key": gold})
    assert missing.startswith("[404] ") and "resnet" in missing
    cropped = np.ascontiguousarray(images[:, :7, :7])
    bad = error_of(triton_client, inputs=[_input(cropped, True)], headers={"X-API-Key": gold})
    assert bad.startswith("[422] ") and "inputs[0].data" in bad
    limited = triton.InferenceServerClient(limited_server.url.removeprefix("http://"))
    try:
        trial = {"X-API-Key": limited_server.keys["trial"][0]}
        limited.infer("digits", [_input(images, True)], headers=trial)
        assert error_of(limited, headers=trial).startswith("[429] ")
    finally:
        limited.close()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
async def test_kserve_rest_client_infers(
    live_server: LiveServer, images: np.ndarray, binary: bool
) -> None:
    key = live_server.keys["gold"][3]
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    tensor = InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary)
    request = InferRequest(model_name="digits", infer_inputs=[tensor], request_id="ks-1")
    try:
        response = await client.infer(
            live_server.url, request, model_name="digits", headers={"X-API-Key": key}
        )
    finally:
        await client.close()
    assert response.id == "ks-1"
    outputs = {o.name: o for o in response.outputs}
    assert set(outputs) == {"label", "index", "score"}
    expected = [p["index"] for p in _predict(live_server, key, images)]
    assert outputs["index"].as_numpy().tolist() == expected
