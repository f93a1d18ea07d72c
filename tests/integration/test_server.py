"""A real uvicorn server: tiers measured through HTTP, concurrency, and a real Prometheus."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import LiveServer, prometheus_server

pytestmark = pytest.mark.integration


def _heldout() -> tuple[list[Any], list[int]]:
    from service.models.data import digits_splits

    x, y = digits_splits().heldout
    return [img.tolist() for img in x], [int(v) for v in y]


def _predict_all(client: httpx.Client, key: str, x: list[Any]) -> list[int]:
    out: list[int] = []
    for i in range(0, len(x), 64):
        r = client.post("/predict", json={"inputs": x[i : i + 64]}, headers={"X-API-Key": key})
        assert r.status_code == 200, r.text
        out += [p["index"] for p in r.json()["predictions"]]
    return out


def test_tier_order_follows_the_config(live_server: LiveServer) -> None:
    allowed = {}
    for tier in ("gold", "silver", "bronze"):
        r = httpx.get(live_server.url + "/model", headers={"X-API-Key": live_server.keys[tier][0]})
        allowed[tier] = r.json()["tiers"]
    assert allowed == {
        "gold": ["gold", "silver", "bronze"],
        "silver": ["silver", "bronze"],
        "bronze": ["bronze"],
    }


def test_tiers_measured_through_http(live_server: LiveServer) -> None:
    from service.models import heldout, load_model

    x, _y = _heldout()
    inputs, _labels = heldout("digits")
    clean = load_model("digits").forward(inputs).argmax(1).tolist()
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        gold = _predict_all(client, live_server.keys["gold"][0], x)
        assert gold == clean
        for tier, target in (("silver", 0.85), ("bronze", 0.6)):
            agreements = []
            for key in live_server.keys[tier]:
                preds = _predict_all(client, key, x)
                agreements.append(sum(p == c for p, c in zip(preds, clean, strict=True)) / len(x))
            # Noise is scoped to the tier: every key gets the same answers, so the tier is one
            # draw of held-out noise, within binomial error of its target (σ is calibrated on
            # the served agreement of the separate calibration split).
            assert len(set(agreements)) == 1, (tier, agreements)
            bound = 3.5 * math.sqrt(target * (1 - target) / len(x))
            assert abs(agreements[0] - target) <= bound, (tier, agreements[0], bound)


def _one(url: str, key: str, body: Any, tier: str | None = None) -> tuple[int, Any]:
    headers = {"X-API-Key": key}
    if tier:
        headers["X-AIM-Tier"] = tier
    r = httpx.post(url + "/predict", json=body, headers=headers, timeout=30)
    return r.status_code, r.json()


def test_mixed_tier_batches_answer_as_alone_and_bad_items_fail_alone(
    live_server: LiveServer,
) -> None:
    x, _ = _heldout()
    jobs: list[tuple[str, Any]] = []
    for i in range(48):
        tier = ("gold", "silver", "bronze")[i % 3]
        key = live_server.keys[tier][i % 2]
        if i % 8 == 7:
            body: Any = {"inputs": [x[i], [[0.0] * 3]]}  # a bad second item
        else:
            body = {"inputs": [x[i], x[i + 1]]}
        jobs.append((key, body))
    alone = [_one(live_server.url, k, b) for k, b in jobs]
    with ThreadPoolExecutor(max_workers=24) as pool:
        together = list(pool.map(lambda job: _one(live_server.url, *job), jobs))
    # Modulation is exact per row (tests/modulation); the forward pass of a CPU conv net may
    # round differently at another batch size, so scores agree to float precision, and
    # everything else (status, tier, labels, top-k order, errors) exactly.
    for (s1, b1), (s2, b2) in zip(together, alone, strict=True):
        assert s1 == s2
        if s1 != 200:
            assert b1 == b2
            continue
        assert b1["tier"] == b2["tier"]
        for p1, p2 in zip(b1["predictions"], b2["predictions"], strict=True):
            assert [t["index"] for t in p1["top_k"]] == [t["index"] for t in p2["top_k"]]
            for t1, t2 in zip(p1["top_k"], p2["top_k"], strict=True):
                assert t1["score"] == pytest.approx(t2["score"], rel=1e-4, abs=1e-6)
    statuses = [s for s, _ in together]
    assert statuses.count(422) == 6 and statuses.count(200) == 42
    bad = next(body for s, body in together if s == 422)
    assert bad["error"]["field"] == "inputs[1]"


def test_prometheus_scrapes_the_latency_histogram(live_server: LiveServer, tmp_path: Path) -> None:
    with prometheus_server([live_server], tmp_path) as prom:
        key = live_server.keys["silver"][0]
        for _ in range(5):
            _one(live_server.url, key, {"inputs": [[[0.0] * 8] * 8]})
        query = 'sum by (tier, le) (aim_request_duration_seconds_bucket{route="/predict"})'
        deadline = time.monotonic() + 60
        result: list[Any] = []
        while time.monotonic() < deadline and not result:
            time.sleep(1)
            try:
                r = httpx.get(f"{prom}/api/v1/query", params={"query": query})
                result = r.json()["data"]["result"] if r.status_code == 200 else []
            except httpx.HTTPError:
                continue
            _one(live_server.url, key, {"inputs": [[[0.0] * 8] * 8]})
        assert result, "Prometheus returned no latency histogram data"
        assert {s["metric"]["tier"] for s in result} >= {"silver"}
        # No key, hash or key id ever becomes a label.
        series = httpx.get(
            f"{prom}/api/v1/series", params={"match[]": '{__name__=~"aim_.*"}'}
        ).json()["data"]
        labels = {k for s in series for k in s}
        assert not labels & {"key", "key_id", "api_key"}
