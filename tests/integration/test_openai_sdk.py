"""The official `openai` SDK, sync and async, against a live `aim serve` of the tiny LM."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from .conftest import LiveServer

pytestmark = pytest.mark.integration

PROMPT = "the cow says"
CHAT = [{"role": "user", "content": "what does the cow say?"}]


def _client(server: LiveServer, key: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.url + "/v1", api_key=key, max_retries=0, default_headers=headers
    )


@pytest.fixture(scope="module")
def gold(lm_server: LiveServer) -> Iterator[openai.OpenAI]:
    with _client(lm_server, lm_server.keys["gold"][0]) as client:
        yield client


@pytest.fixture(scope="module")
def model(gold: openai.OpenAI) -> str:
    return gold.models.list().data[0].id


def test_models_list_names_the_served_model(gold: openai.OpenAI, lm_server: LiveServer) -> None:
    models = gold.models.list().data
    assert len(models) == 1 and models[0].object == "model"
    info = httpx.get(lm_server.url + "/model", headers={"X-API-Key": lm_server.keys["gold"][0]})
    assert models[0].id == info.json()["name"]


def test_completion_is_predict_greedy_text_with_usage(
    gold: openai.OpenAI, model: str, lm_server: LiveServer
) -> None:
    done = gold.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0)
    predicted = httpx.post(
        lm_server.url + "/predict",
        json={"prompt": PROMPT, "max_new_tokens": 8},
        headers={"X-API-Key": lm_server.keys["gold"][0]},
    ).json()
    choice = done.choices[0]
    assert choice.text == predicted["text"] and choice.text
    assert choice.finish_reason == {"length": "length", "stop": "stop"}[predicted["finish_reason"]]
    assert done.usage is not None
    assert done.usage.completion_tokens == len(predicted["tokens"])
    assert done.usage.prompt_tokens > 0
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens


def test_stop_string_ends_the_text_before_it(gold: openai.OpenAI, model: str) -> None:
    prompt = "count up: one two"
    full = gold.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0)
    text = full.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert len(stop) == 3, text
    cut = gold.completions.create(
        model=model, prompt=prompt, max_tokens=16, temperature=0, stop=["zebra-never", stop]
    )
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_streamed_chat_equals_the_chat(gold: openai.OpenAI, model: str) -> None:
    whole = gold.chat.completions.create(model=model, messages=CHAT, max_tokens=10, temperature=0)
    stream = gold.chat.completions.create(
        model=model,
        messages=CHAT,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert whole.choices[0].message.role == "assistant"
    assert "".join(pieces) == whole.choices[0].message.content and pieces.count("") <= 2
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage is not None and whole.usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_errors_are_the_sdk_exceptions(lm_server: LiveServer, model: str) -> None:
    with _client(lm_server, "aim_not-a-key") as bad, pytest.raises(openai.AuthenticationError):
        bad.models.list()
    bronze_key = lm_server.keys["bronze"][0]
    above = _client(lm_server, bronze_key, **{"X-AIM-Tier": "gold"})
    with above, pytest.raises(openai.PermissionDeniedError):
        above.completions.create(model=model, prompt=PROMPT, max_tokens=2)
    with _client(lm_server, bronze_key) as bronze:
        with pytest.raises(openai.PermissionDeniedError) as denied:
            bronze.completions.create(
                model=model, prompt=PROMPT, max_tokens=2, logit_bias={"5": 10.0}
            )
        assert "focus" in denied.value.message
        with pytest.raises(openai.BadRequestError) as refused:
            bronze.completions.create(model=model, prompt=PROMPT, max_tokens=2, n=2)
        assert refused.value.param == "n"  # type: ignore[attr-defined]
        with pytest.raises(openai.NotFoundError):
            bronze.completions.create(model="gpt-4o", prompt=PROMPT, max_tokens=2)


def _bronze_text(server: LiveServer, key: str, model: str, **headers: str) -> str:
    with _client(server, key, **headers) as client:
        done = client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0)
    return done.choices[0].text


def test_two_keys_of_one_tier_get_one_completion(lm_server: LiveServer, model: str) -> None:
    first, second = lm_server.keys["bronze"]
    assert _bronze_text(lm_server, first, model) == _bronze_text(lm_server, second, model)


def test_gold_lowered_to_bronze_gets_bronze_completion(
    lm_server: LiveServer, model: str, gold: openai.OpenAI
) -> None:
    lowered = _bronze_text(lm_server, lm_server.keys["gold"][1], model, **{"X-AIM-Tier": "bronze"})
    assert lowered == _bronze_text(lm_server, lm_server.keys["bronze"][0], model)
    own = gold.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0)
    assert lowered != own.choices[0].text  # σ = 3 changes the text: the lowering took effect


async def test_async_sdk_lists_completes_and_streams(lm_server: LiveServer, model: str) -> None:
    key = lm_server.keys["silver"][0]
    async with openai.AsyncOpenAI(
        base_url=lm_server.url + "/v1", api_key=key, max_retries=0
    ) as client:
        assert [m.id async for m in client.models.list()] == [model]
        done = await client.completions.create(
            model=model, prompt=PROMPT, max_tokens=6, temperature=0
        )
        stream = await client.completions.create(
            model=model, prompt=PROMPT, max_tokens=6, temperature=0, stream=True
        )
        streamed = "".join([c.choices[0].text async for c in stream if c.choices])
        assert streamed == done.choices[0].text and done.choices[0].text
        chat = await client.chat.completions.create(
            model=model, messages=CHAT, max_tokens=6, temperature=0
        )
        assert chat.choices[0].message.content and chat.usage and chat.usage.prompt_tokens > 0
        with pytest.raises(openai.AuthenticationError):
            await client.with_options(api_key="aim_nope").models.list()
