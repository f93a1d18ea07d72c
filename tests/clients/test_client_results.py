"""What the client returns: typed, frozen results parsed from the contract's JSON."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest
from aim_client import (
    AimClient,
    AsyncAimClient,
    GenerationResult,
    InvalidResponseError,
    ModelInfo,
    Prediction,
    PredictResult,
    SegmentationPrediction,
    TopK,
)

pytestmark = pytest.mark.unit


def test_classification_result(aim, server, ok_classification):
    server.reply(ok_classification)

    result = aim.predict([[1, 2]])

    assert isinstance(result, PredictResult)
    assert (result.model, result.tier, result.task, result.request_id) == (
        "digits",
        "silver",
        "classification",
        "req-1",
    )
    assert result.predictions == (
        Prediction(
            label="3",
            index=3,
            score=0.91,
            top_k=(TopK("3", 3, 0.91), TopK("8", 8, 0.05)),
        ),
    )
    assert len(result) == 1
    assert list(result) == [result[0]]


def test_results_are_frozen(aim, server, ok_classification):
    server.reply(ok_classification)

    result = aim.predict([[1, 2]])

    with pytest.raises(dataclasses.FrozenInstanceError):
        result.tier = "gold"  # type: ignore[misc]


def test_segmentation_result(aim, server):
    server.reply(
        httpx.Response(
            200,
            json={
                "model": "digit-scenes",
                "tier": "gold",
                "task": "segmentation",
                "predictions": [
                    {"mask": [[0, 0, 4], [0, 4, 4]], "counts": {"background": 3, "4": 3}}
                ],
            },
        )
    )

    result = aim.predict([[[0.0] * 3] * 2])

    (prediction,) = result.predictions
    assert isinstance(prediction, SegmentationPrediction)
    assert prediction.mask == ((0, 0, 4), (0, 4, 4))
    assert dict(prediction.counts) == {"background": 3, "4": 3}
    hash(prediction)  # frozen results stay hashable despite the counts mapping


def test_task_is_inferred_when_missing(aim, server):
    server.reply(
        httpx.Response(200, json={"model": "m", "tier": "t", "predictions": [{"mask": [[1]]}]})
    )

    result = aim.predict([[1]])

    assert result.task == "segmentation"
    assert isinstance(result[0], SegmentationPrediction)


def test_extra_fields_are_tolerated(aim, server):
    payload = {
        "model": "digits",
        "tier": "silver",
        "task": "classification",
        "predictions": [
            {"label": "1", "index": 1, "score": 1, "top_k": [], "entropy": 0.1, "new": {"x": 1}}
        ],
        "usage": {"items": 1},
        "version": 2,
    }
    server.reply(httpx.Response(200, json=payload))

    (prediction,) = aim.predict([[1]]).predictions

    assert prediction == Prediction(label="1", index=1, score=1.0)
    assert isinstance(prediction.score, float)


def test_mistyped_field_is_named(aim, server):
    payload = {"model": "m", "tier": "t", "task": "classification", "predictions": [{"label": "1"}]}
    server.reply(httpx.Response(200, json=payload))

    with pytest.raises(InvalidResponseError, match=r"predictions\[0\]\.index"):
        aim.predict([[1]])


def test_model_info(aim, server, api_key):
    server.reply(
        httpx.Response(
            200,
            json={
                "name": "digits",
                "task": "classification",
                "labels": [str(i) for i in range(10)],
                "input": {"shape": [8, 8], "range": [0, 16]},
                "tiers": ["silver", "bronze"],
                "tier": "silver",
                "extra": True,
            },
        )
    )

    info = aim.model_info(tier="bronze")

    assert info == ModelInfo(
        name="digits",
        task="classification",
        labels=tuple(str(i) for i in range(10)),
        input={"shape": [8, 8], "range": [0, 16]},
        tiers=("silver", "bronze"),
        tier="silver",
    )
    assert (server.last.method, server.last.url.path) == ("GET", "/model")
    assert server.last.headers["X-AIM-Tier"] == "bronze"
    assert server.last.headers["X-API-Key"] == api_key


def test_generation_result(aim, server):
    server.reply(
        httpx.Response(
            200,
            json={
                "model": "tiny-lm",
                "tier": "silver",
                "task": "generation",
                "text": "the cat",
                "tokens": [5, 9],
                "finish_reason": "stop",
            },
        )
    )

    result = aim.generate("once")

    assert result == GenerationResult(
        model="tiny-lm", tier="silver", text="the cat", tokens=(5, 9), finish_reason="stop"
    )


@pytest.mark.parametrize(
    ("path", "reply", "expected"),
    [
        ("/healthz", httpx.Response(200, json={"status": "ok"}), True),
        ("/healthz", httpx.Response(500, json={"status": "broken"}), False),
        ("/healthz", httpx.ConnectError, False),
        ("/readyz", httpx.Response(200, json={"status": "ready"}), True),
        (
            "/readyz",
            httpx.Response(503, json={"status": "loading"}, headers={"Retry-After": "1"}),
            False,
        ),
        ("/readyz", httpx.ReadTimeout, False),
    ],
)
def test_probes_answer_true_or_false_at_once(aim, server, sleeps, path, reply, expected):
    server.reply(reply)

    answer = aim.health() if path == "/healthz" else aim.ready()

    assert answer is expected
    assert (server.last.method, server.last.url.path) == ("GET", path)
    assert len(server.requests) == 1
    assert sleeps == []


# --- lifecycle ---------------------------------------------------------------------------------


def test_sync_context_manager_closes(server, ok_classification):
    server.reply(ok_classification)
    with AimClient("http://aim.test", transport=httpx.MockTransport(server)) as client:
        client.predict([[1]])

    assert client._http.is_closed


@pytest.mark.asyncio
async def test_async_context_manager_closes(server, ok_classification):
    server.reply(ok_classification)
    async with AsyncAimClient("http://aim.test", transport=httpx.MockTransport(server)) as client:
        result = await client.predict([[1]])

    assert result[0].label == "3"
    assert client._http.is_closed


@pytest.mark.asyncio
async def test_async_client_runs_calls_concurrently(server, ok_classification):
    server.reply(ok_classification)
    async with AsyncAimClient("http://aim.test", transport=httpx.MockTransport(server)) as client:
        results = await asyncio.gather(*(client.predict([[i]]) for i in range(5)))

    assert [r[0].label for r in results] == ["3"] * 5
    assert sorted(r.content for r in server.requests) == sorted(
        f'{{"inputs":[[{i}]]}}'.encode() for i in range(5)
    )
