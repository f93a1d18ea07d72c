"""The OpenAI-compatible API in-process: error shapes and statuses, logit_bias as focus, stop
strings, the default chat prompt, the SSE framing, and the SDK's exceptions (429 included)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from fastapi.testclient import TestClient

from service.api.routes.openai_run import StopText

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]
pytest.importorskip("transformers")


def _config(lm_dir: Path) -> dict[str, Any]:
    return {
        "model": {"task": "generation", "loader": "huggingface", "path": str(lm_dir)},
        "tiers": {
            "gold": {"utility": 1.0},
            "silver": {"sigma": 1.0},
            "bronze": {"sigma": 2.0, "focus": False},
            "trial": {"sigma": 2.0, "rate_limit": "2/m"},
        },
    }


@pytest.fixture(scope="module")
def client(make_client: Any, tiny_lm_dir: Path) -> Iterator[TestClient]:
    with make_client(_config(tiny_lm_dir), max_wait_ms=5.0) as c:
        yield c


@pytest.fixture(scope="module")
def model(client: TestClient, api_keys: dict[str, str]) -> str:
    r = client.get("/v1/models", headers={"Authorization": f"Bearer {api_keys['gold']}"})
    assert r.status_code == 200, r.text
    return str(r.json()["data"][0]["id"])


def _sdk(client: TestClient, key: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url="http://testserver/v1",
        api_key=key,
        http_client=client,
        max_retries=0,
        default_headers=headers,
    )


def _post(client: TestClient, path: str, key: str, body: dict[str, Any]) -> Any:
    return client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})


def test_errors_have_openai_shape_and_status(
    client: TestClient, api_keys: dict[str, str], model: str
) -> None:
    r = client.get("/v1/models")
    assert r.status_code == 401
    error = r.json()["error"]
    assert error["type"] == "authentication_error" and "API key" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    body = {"model": model, "prompt": "a", "max_tokens": 0}
    r = _post(client, "/v1/completions", api_keys["gold"], body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = _post(client, "/v1/completions", api_keys["gold"], {"model": model, "prompt": "a", "k": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "k"
    r = _post(client, "/v1/chat/completions", api_keys["gold"], {"model": model, "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_sdk_raises_its_exceptions(
    client: TestClient, api_keys: dict[str, str], model: str
) -> None:
    with pytest.raises(openai.AuthenticationError):
        _sdk(client, "aim_nope").models.list()
    with pytest.raises(openai.PermissionDeniedError):
        _sdk(client, api_keys["silver"], **{"X-AIM-Tier": "gold"}).models.list()
    with pytest.raises(openai.BadRequestError) as info:
        _sdk(client, api_keys["gold"]).completions.create(model=model, prompt="a", top_p=0)
    assert info.value.param == "top_p"  # type: ignore[attr-defined]
    trial = _sdk(client, api_keys["trial"])
    with pytest.raises(openai.RateLimitError):
        for _ in range(3):  # 2 a minute
            trial.completions.create(model=model, prompt="a", max_tokens=1)


def test_logit_bias_is_focus_within_the_tier_policy(
    client: TestClient, api_keys: dict[str, str], model: str
) -> None:
    sdk = _sdk(client, api_keys["gold"])
    token = 42
    done = sdk.completions.create(
        model=model, prompt="the cow says", max_tokens=4, temperature=0, logit_bias={"42": 100}
    )
    r = client.post(
        "/predict",
        json={
            "prompt": "the cow says",
            "max_new_tokens": 4,
            "focus": [{"token": token, "direction": "up", "strength": 100.0}],
        },
        headers={"X-API-Key": api_keys["gold"]},
    )
    # Focus adds strength·|η|, η half-normal per decoding step: a step may draw a small |η|
    # (the tier-scoped seed decides which), so most steps, not all, turn into the token.
    assert r.json()["tokens"].count(token) >= 3 and done.choices[0].text == r.json()["text"]
    with pytest.raises(openai.PermissionDeniedError) as denied:
        _sdk(client, api_keys["bronze"]).completions.create(
            model=model, prompt="a", logit_bias={"42": 5}
        )
    assert "focus" in denied.value.message
    with pytest.raises(openai.BadRequestError):
        sdk.completions.create(model=model, prompt="a", logit_bias={"the": 5})


def test_default_chat_prompt_is_a_transcript(
    client: TestClient, api_keys: dict[str, str], model: str
) -> None:
    lm = client.app.state.aim.model.adapter  # type: ignore[attr-defined]
    assert not getattr(lm.tokenizer, "chat_template", None)  # the tiny LM has none
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "the cow says"}]},
    ]
    chat = _sdk(client, api_keys["gold"]).chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=3,
        temperature=0,  # type: ignore[arg-type]
    )
    expected = lm.encode("System: be brief\nUser: the cow says\nAssistant:")
    assert chat.usage is not None and chat.usage.prompt_tokens == len(expected)


def test_stream_is_sse_chunks_then_done(
    client: TestClient, api_keys: dict[str, str], model: str
) -> None:
    body = {"model": model, "prompt": "count up: one", "max_tokens": 5, "temperature": 0}
    whole = _post(client, "/v1/completions", api_keys["gold"], body).json()
    r = _post(client, "/v1/completions", api_keys["gold"], {**body, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [orjson.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == whole["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


def test_a_vision_model_has_no_openai_api(make_client: Any, api_keys: dict[str, str]) -> None:
    with make_client() as vision:
        r = _post(vision, "/v1/completions", api_keys["gold"], {"model": "digits", "prompt": "a"})
    assert r.status_code == 404 and "generation" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("pieces", "stops", "sent", "stopped"),
    [
        (["hello wor", "ld"], ["world"], "hello ", True),
        (["ab", "c", "d"], ["cx"], "abcd", False),  # "c" held back, then let go
        (["a", "b"], [], "ab", False),
        (["xy", "z."], ["yz", "z."], "x", True),  # the earliest stop wins
    ],
)
def test_stop_text(pieces: list[str], stops: list[str], sent: str, stopped: bool) -> None:
    scan, out, hit = StopText(stops), "", False
    for piece in pieces:
        got, hit = scan.feed(piece)
        out += got
        if hit:
            break
    if not hit:
        out += scan.flush()
    assert (out, hit) == (sent, stopped)


def test_two_different_keys_are_a_400_in_openai_shape(
    client: TestClient, api_keys: dict[str, str]
) -> None:
    both = {"X-API-Key": api_keys["bronze"], "Authorization": f"Bearer {api_keys['gold']}"}
    r = client.get("/v1/models", headers=both)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "X-API-Key" in error["message"] and "Authorization: Bearer" in error["message"]


def test_an_over_long_prompt_is_413_naming_the_field_before_any_tokenizing(
    client: TestClient, api_keys: dict[str, str], model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.api.routes import openai as routes
    from service.api.routes.openai_schemas import MAX_PROMPT_CHARS

    tokenized: list[object] = []
    monkeypatch.setattr(routes, "completion_prompt", lambda *a: tokenized.append(a))
    monkeypatch.setattr(routes, "chat_prompt", lambda *a: tokenized.append(a))
    long = "a" * (MAX_PROMPT_CHARS + 1)
    gold = api_keys["gold"]
    r = _post(client, "/v1/completions", gold, {"model": model, "prompt": long})
    assert r.status_code == 413 and r.json()["error"]["param"] == "prompt"
    messages = [{"role": "system", "content": "x"}, {"role": "user", "content": long}]
    chat = {"model": model, "messages": messages}
    r = _post(client, "/v1/chat/completions", gold, chat)
    assert r.status_code == 413 and r.json()["error"]["param"] == "messages[1].content"
    assert tokenized == []


def test_limits_are_checked_before_the_prompt_is_tokenized(
    client: TestClient, api_keys: dict[str, str], model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trial tier allows 2 requests a minute: the refused ones never reach the tokenizer."""
    from service.api.routes import openai as routes

    calls: list[object] = []
    real = routes.completion_prompt

    def counting(*args: object) -> object:
        calls.append(args)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(routes, "completion_prompt", counting)
    trial = api_keys["trial"]
    body = {"model": model, "prompt": "the cow says", "max_tokens": 1}
    statuses = [_post(client, "/v1/completions", trial, body).status_code for _ in range(4)]
    assert statuses.count(429) >= 2
    assert len(calls) == statuses.count(200)
