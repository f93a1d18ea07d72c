"""What the client sends: headers, tiers, and inputs and focus encoded as the HTTP contract says."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from aim_client import AimClient, AsyncAimClient, Focus

pytestmark = pytest.mark.unit

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR fake image body"
JPEG = b"\xff\xd8\xff\xe0" + b"fake jpeg body"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- headers and tiers -------------------------------------------------------------------------


def test_key_and_json_headers_are_sent(aim, server, ok_classification, api_key):
    server.reply(ok_classification)

    aim.predict([[1, 2]])

    request = server.last
    assert (request.method, str(request.url)) == ("POST", "http://aim.test/predict")
    assert request.headers["X-API-Key"] == api_key
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["User-Agent"].startswith("aim-client/")
    assert "X-AIM-Tier" not in request.headers


def test_client_tier_is_sent_and_a_call_tier_overrides_it(make_aim, server, ok_classification):
    server.reply(ok_classification)
    aim = make_aim(tier="silver")

    aim.predict([[1, 2]])
    aim.predict([[1, 2]], tier="bronze")

    assert [r.headers["X-AIM-Tier"] for r in server.requests] == ["silver", "bronze"]


def test_api_key_falls_back_to_the_environment(make_aim, server, ok_classification, monkeypatch):
    monkeypatch.setenv("AIM_API_KEY", "from-env")
    server.reply(ok_classification)
    aim = make_aim(api_key=None)

    aim.predict([[1, 2]])

    assert server.last.headers["X-API-Key"] == "from-env"


def test_base_url_path_prefix_is_kept(server, ok_classification):
    server.reply(ok_classification)
    with AimClient(
        "http://aim.test/serving/", api_key="k", transport=httpx.MockTransport(server)
    ) as client:
        client.predict([[1]])

    assert str(server.last.url) == "http://aim.test/serving/predict"


# --- inputs ------------------------------------------------------------------------------------


def test_nested_lists_and_tuples_are_sent_as_lists(aim, server, ok_classification):
    server.reply(ok_classification)

    aim.predict([[[0, 1.5], (2, 3)], ((4, 5), [6, 7])])

    assert server.body()["inputs"] == [[[0, 1.5], [2, 3]], [[4, 5], [6, 7]]]


def test_numpy_batch_is_sent_as_nested_lists(aim, server, ok_classification):
    np = pytest.importorskip("numpy")
    server.reply(ok_classification)
    batch = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8) / 4

    aim.predict(batch)

    assert server.body()["inputs"] == batch.tolist()


def test_list_of_arrays_and_numpy_scalars(aim, server, ok_classification):
    np = pytest.importorskip("numpy")
    server.reply(ok_classification)

    aim.predict([np.ones((2, 2), dtype=np.int64), [np.float32(0.5), np.int16(3)]])

    assert server.body()["inputs"] == [[[1, 1], [1, 1]], [0.5, 3]]


def test_image_bytes_are_sent_as_base64(aim, server, ok_classification):
    server.reply(ok_classification)

    aim.predict([PNG, bytearray(JPEG)])

    assert server.body()["inputs"] == [{"image_b64": b64(PNG)}, {"image_b64": b64(JPEG)}]


def test_image_paths_are_read_and_sent_as_base64(aim, server, ok_classification, tmp_path):
    server.reply(ok_classification)
    png, jpeg = tmp_path / "digit.png", tmp_path / "digit.jpg"
    png.write_bytes(PNG)
    jpeg.write_bytes(JPEG)

    aim.predict([png, str(jpeg)])

    assert server.body()["inputs"] == [{"image_b64": b64(PNG)}, {"image_b64": b64(JPEG)}]


@pytest.mark.parametrize("single", ["bytes", "path", "str"])
def test_a_single_image_needs_no_list(aim, server, ok_classification, tmp_path, single):
    server.reply(ok_classification)
    path = tmp_path / "digit.png"
    path.write_bytes(PNG)
    value = {"bytes": PNG, "path": path, "str": str(path)}[single]

    aim.predict(value)

    assert server.body()["inputs"] == [{"image_b64": b64(PNG)}]


def test_encoded_image_mappings_pass_through(aim, server, ok_classification):
    server.reply(ok_classification)

    aim.predict([{"image_b64": "QUJD"}])

    assert server.body()["inputs"] == [{"image_b64": "QUJD"}]


@pytest.mark.parametrize(
    ("inputs", "error", "match"),
    [
        ([], ValueError, r"`inputs` must hold at least one input"),
        ([[1, 2], [3, float("nan")]], ValueError, r"`inputs\[1\]\[1\]` must be a finite number"),
        ([[1, 2], [[3, "x"]]], TypeError, r"`inputs\[1\]\[0\]\[1\]` must be a number"),
        ([[True, 1]], TypeError, r"`inputs\[0\]\[0\]` must be a number"),
        ([b"\x00\x01raw pixels"], ValueError, r"`inputs\[0\]` must be PNG or JPEG"),
        ([[1], object()], TypeError, r"`inputs\[1\]` must be a nested list"),
        (["/no/such/image.png"], ValueError, r"`inputs\[0\]` is taken as the path"),
        (42, TypeError, r"`inputs` must be a list of inputs"),
    ],
)
def test_bad_inputs_are_refused_naming_the_element(aim, server, inputs, error, match):
    with pytest.raises(error, match=match):
        aim.predict(inputs)

    assert server.requests == []


def test_scalar_array_is_refused(aim):
    np = pytest.importorskip("numpy")

    with pytest.raises(TypeError, match="first axis indexes inputs"):
        aim.predict(np.float32(1.0))


# --- focus and top_k ---------------------------------------------------------------------------


def test_focus_and_top_k_are_sent(aim, server, ok_classification):
    server.reply(ok_classification)

    aim.predict(
        [[1, 2]],
        top_k=3,
        focus=[
            Focus("3", "up", 4.0),
            Focus(7, "down", 2, region=(0, 0, 4, 4)),
            {"class": "all", "direction": "down", "strength": 1.0},
        ],
    )

    body = server.body()
    assert body["top_k"] == 3
    assert body["focus"] == [
        {"class": "3", "direction": "up", "strength": 4.0},
        {"class": 7, "direction": "down", "strength": 2.0, "region": [0, 0, 4, 4]},
        {"class": "all", "direction": "down", "strength": 1.0},
    ]


def test_a_single_focus_needs_no_list(aim, server, ok_classification):
    server.reply(ok_classification)

    aim.predict([[1, 2]], focus=Focus("3", strength=1.5))

    assert server.body()["focus"] == [{"class": "3", "direction": "up", "strength": 1.5}]


def test_body_leaves_out_what_was_not_asked(aim, server, ok_classification):
    server.reply(ok_classification)

    aim.predict([[1, 2]])

    assert server.body() == {"inputs": [[1, 2]]}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of `cls`"),
        ({"cls": "3", "token": "the"}, "exactly one of `cls`"),
        ({"cls": "3", "direction": "sideways"}, r"`direction` must be 'up' or 'down'.*'sideways'"),
        ({"cls": "3", "strength": -1.0}, r"`strength` must be a finite number >= 0.*-1.0"),
        ({"cls": "3", "strength": float("inf")}, r"`strength`.*inf"),
        ({"cls": "3", "region": (0, 0, 4)}, r"`region` must be four"),
        ({"cls": "3", "region": (0, 0, 4.5, 4)}, r"`region` must be four"),
    ],
)
def test_focus_arguments_are_checked_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Focus(**kwargs)


def test_focus_for_generation_names_a_token():
    assert Focus(token="the", strength=2.0).to_json() == {
        "token": "the",
        "direction": "up",
        "strength": 2.0,
    }


def test_focus_accepts_numpy_numbers():
    np = pytest.importorskip("numpy")

    focus = Focus(np.int64(3), strength=np.float32(2.0), region=tuple(np.array([0, 0, 2, 2])))

    assert focus.to_json() == {
        "class": 3,
        "direction": "up",
        "strength": 2.0,
        "region": [0, 0, 2, 2],
    }


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_k": 0}, r"`top_k` must be an integer >= 1, but is 0"),
        ({"tier": ""}, r"`tier` must be a tier name"),
        ({"focus": [3]}, r"`focus\[0\]` must be a Focus"),
    ],
)
def test_predict_arguments_are_checked(aim, server, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        aim.predict([[1, 2]], **kwargs)

    assert server.requests == []


# --- generation --------------------------------------------------------------------------------


def test_generate_sends_the_generation_body(aim, server):
    server.reply(
        httpx.Response(
            200,
            json={
                "model": "tiny-lm",
                "tier": "silver",
                "task": "generation",
                "text": "the cat",
                "tokens": [5, 9],
                "finish_reason": "length",
            },
        )
    )

    aim.generate(
        "once", max_new_tokens=2, temperature=0.7, top_p=0.9, focus=Focus(token="the", strength=2)
    )

    assert server.body() == {
        "prompt": "once",
        "max_new_tokens": 2,
        "temperature": 0.7,
        "top_p": 0.9,
        "focus": [{"token": "the", "direction": "up", "strength": 2.0}],
        "stream": False,
    }


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_new_tokens": 0}, r"`max_new_tokens` must be an integer >= 1, but is 0"),
        ({"temperature": -0.5}, r"`temperature` must be a finite number >= 0, but is -0.5"),
        ({"top_p": 0.0}, r"`top_p` must be a finite number in \(0, 1\], but is 0.0"),
        ({"top_p": 1.5}, r"`top_p` must be a finite number in \(0, 1\], but is 1.5"),
    ],
)
def test_generate_arguments_are_checked_naming_the_field(aim, server, kwargs, match):
    with pytest.raises(ValueError, match=match):
        aim.generate("once", **kwargs)

    assert server.requests == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base_url": "localhost:8000"}, r"`base_url` must be an http:// or https:// URL"),
        ({"max_retries": -1}, r"`max_retries` must be an integer >= 0, but is -1"),
        ({"timeout": 0}, r"`timeout` must be a finite number > 0, but is 0"),
        ({"api_key": ""}, r"`api_key` must be a non-empty string"),
    ],
)
@pytest.mark.parametrize("client_class", [AimClient, AsyncAimClient])
def test_constructor_arguments_are_checked(client_class, kwargs, match):
    kwargs = {"base_url": "http://aim.test", **kwargs}

    with pytest.raises(ValueError, match=match):
        client_class(**kwargs)


# --- the twins send the same bytes -------------------------------------------------------------


def _capture(client_class, call):
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(500, json={"error": {"code": "stop", "message": "captured"}})

    client = client_class(
        "http://aim.test",
        api_key="k",
        tier="silver",
        max_retries=0,
        transport=httpx.MockTransport(handler),
    )
    try:
        result = call(client)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
    except Exception:
        pass
    (request,) = requests
    return request.method, str(request.url), sorted(request.headers.items()), request.content


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.predict([[1, 2]], top_k=2, focus=Focus("3", "up", 4.0), tier="bronze"),
        lambda c: c.predict([PNG]),
        lambda c: c.generate("hi", max_new_tokens=4, focus=[Focus(token=7, direction="down")]),
        lambda c: c.model_info(),
        lambda c: c.health(),
    ],
    ids=["predict", "predict-image", "generate", "model-info", "health"],
)
def test_sync_and_async_clients_send_identical_requests(call):
    assert _capture(AimClient, call) == _capture(AsyncAimClient, call)


def test_sync_and_async_streams_send_identical_requests():
    def sync_call(client):
        with client.stream("hi", max_new_tokens=3) as events:
            list(events)

    async def async_call(client):
        async with client.stream("hi", max_new_tokens=3) as events:
            [e async for e in events]

    sync_request = _capture(AimClient, sync_call)
    async_request = _capture(AsyncAimClient, async_call)

    assert sync_request == async_request
    assert ("accept", "text/event-stream") in sync_request[2]


# --- packaging ---------------------------------------------------------------------------------


def test_import_pulls_in_neither_numpy_nor_torch():
    code = "import sys, aim_client; print('numpy' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout

    assert out.split() == ["False", "False"]


def test_package_ships_py_typed():
    import aim_client

    assert (Path(aim_client.__file__).parent / "py.typed").is_file()


def test_all_names_are_exported():
    import aim_client

    assert all(hasattr(aim_client, name) for name in aim_client.__all__)
