"""The direct `POST /predict` (api/direct.py) answers exactly as FastAPI's route does.

The same service is built twice: as `create_app` builds it, and with the direct route left out
of its edge, so FastAPI routes `/predict` through its dependency machinery and exception
handlers. Every request below gets the same status, body and headers from both.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.types import ASGIApp

from service.access.keys import KeyStore
from service.api.app import create_app
from service.api.metering import MeteringMiddleware
from service.api.middleware import ServiceMiddleware
from service.api.state import AppState
from service.config import ServiceConfig
from service.settings import Settings
from tests.conftest import DIGITS_CONFIG, TEST_SECRET, wait_ready

pytestmark = pytest.mark.unit

ZERO = [[0.0] * 8 for _ in range(8)]


def _without_direct(inner: ASGIApp, state: AppState, max_body_bytes: int) -> ASGIApp:
    return ServiceMiddleware(
        MeteringMiddleware(inner, state.accounting), state.metrics, max_body_bytes
    )


@pytest.fixture(scope="module")
def clients(key_store: KeyStore, cache_dir: Path) -> Iterator[tuple[TestClient, TestClient]]:
    apps = []
    for direct in (True, False):
        settings = Settings(cache_dir=cache_dir, device="cpu", max_body_bytes=64 * 1024)
        app = create_app(
            settings, ServiceConfig.from_dict(DIGITS_CONFIG), key_store, secret=TEST_SECRET
        )
        if not direct:
            state = app.state.aim
            app.edge = partial(_without_direct, state=state, max_body_bytes=settings.max_body_bytes)
        apps.append(app)
    with (
        TestClient(apps[0], raise_server_exceptions=False) as a,
        TestClient(apps[1], raise_server_exceptions=False) as b,
    ):
        wait_ready(a)
        wait_ready(b)
        yield a, b


def requests(keys: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    gold = {"X-API-Key": keys["gold"]}
    json_ = {"Content-Type": "application/json"}
    return [
        ("answer", {"json": {"inputs": [ZERO, ZERO], "top_k": 2}, "headers": gold}),
        (
            "bearer, lowered",
            {
                "json": {"inputs": [ZERO]},
                "headers": {"Authorization": f"Bearer {keys['gold']}", "X-AIM-Tier": "silver"},
            },
        ),
        (
            "focus",
            {
                "json": {"inputs": [ZERO], "focus": [{"class": "3", "direction": "up"}]},
                "headers": gold,
            },
        ),
        ("no key", {"json": {"inputs": [ZERO]}}),
        ("unknown key", {"json": {"inputs": [ZERO]}, "headers": {"X-API-Key": "aim_nope"}}),
        (
            "raise tier",
            {
                "json": {"inputs": [ZERO]},
                "headers": {"X-API-Key": keys["bronze"], "X-AIM-Tier": "gold"},
            },
        ),
        ("unknown tier", {"json": {"inputs": [ZERO]}, "headers": {**gold, "X-AIM-Tier": "x"}}),
        ("not json", {"content": b"{", "headers": {**gold, **json_}}),
        ("empty", {"content": b"", "headers": {**gold, **json_}}),
        ("text", {"content": b"hi", "headers": {**gold, "Content-Type": "text/plain"}}),
        (
            "bad element",
            {"json": {"inputs": [[[1.0] * 8] * 7 + [[1.0] * 7 + ["x"]]]}, "headers": gold},
        ),
        ("out of range", {"json": {"inputs": [[[99.0] * 8] * 8]}, "headers": gold}),
        ("unknown field", {"json": {"inputs": [ZERO], "nope": 1}, "headers": gold}),
        ("top_k", {"json": {"inputs": [ZERO], "top_k": 11}, "headers": gold}),
        ("focus class", {"json": {"inputs": [ZERO], "focus": [{"class": "z"}]}, "headers": gold}),
        (
            "focus off",
            {
                "json": {"inputs": [ZERO], "focus": [{"class": "3"}]},
                "headers": {"X-API-Key": keys["bronze"]},
            },
        ),
        ("tier items", {"json": {"inputs": [ZERO] * 5}, "headers": {"X-API-Key": keys["bronze"]}}),
        ("too many items", {"json": {"inputs": [ZERO] * 65}, "headers": gold}),
        ("body too large", {"content": b"[" * 70_000, "headers": {**gold, **json_}}),
        ("bad base64", {"json": {"inputs": [{"image_b64": "!!"}]}, "headers": gold}),
    ]


def comparable(r: Any) -> tuple[int, Any, dict[str, str]]:
    headers = {k: v for k, v in r.headers.items() if k not in ("x-request-id", "date")}
    body = r.json() if r.headers.get("content-type") == "application/json" else r.text
    return r.status_code, body, headers


def test_answers_match_fastapi_routing(
    clients: tuple[TestClient, TestClient], api_keys: dict[str, str]
) -> None:
    direct, routed = clients
    for name, kwargs in requests(api_keys):
        a, b = direct.post("/predict", **kwargs), routed.post("/predict", **kwargs)
        assert comparable(a) == comparable(b), name
    # The rate limit's 429 (trial: 2 a minute), with its Retry-After.
    trial = {"json": {"inputs": [ZERO]}, "headers": {"X-API-Key": api_keys["trial"]}}
    answers = [[c.post("/predict", **trial) for _ in range(3)] for c in clients]
    assert [r.status_code for r in answers[0]] == [r.status_code for r in answers[1]]
    assert answers[0][-1].status_code == 429
    limited = [r.json()["error"]["code"] for r in (answers[0][-1], answers[1][-1])]
    assert limited == ["rate_limited", "rate_limited"]  # the message says when, to the 10 ms
    assert "retry-after" in answers[0][-1].headers


def test_other_methods_and_paths_go_to_fastapi(
    clients: tuple[TestClient, TestClient], api_keys: dict[str, str]
) -> None:
    direct, routed = clients
    gold = {"X-API-Key": api_keys["gold"]}
    for method, path in (("GET", "/predict"), ("PUT", "/predict"), ("POST", "/predict/x")):
        a = direct.request(method, path, headers=gold)
        b = routed.request(method, path, headers=gold)
        assert a.status_code in (404, 405) and comparable(a) == comparable(b), (method, path)


def test_metrics_usage_and_request_ids_are_kept(
    clients: tuple[TestClient, TestClient], api_keys: dict[str, str]
) -> None:
    direct, _ = clients
    r = direct.post(
        "/predict",
        json={"inputs": [ZERO]},
        headers={"X-API-Key": api_keys["silver"], "X-Request-ID": "direct-1"},
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "direct-1"
    metrics = direct.get("/metrics").text
    line = 'aim_requests_total{route="/predict",status="200",tier="silver"}'
    assert line in metrics, metrics


def test_an_unexpected_error_is_a_500_with_the_request_id(
    clients: tuple[TestClient, TestClient],
    api_keys: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    direct, _ = clients
    app = direct.app
    stack: Any = app.middleware_stack  # type: ignore[attr-defined]
    route = stack.app.app  # ServiceMiddleware → MeteringMiddleware → DirectRoute

    async def broken(*_: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(route, "endpoint", broken)
    with caplog.at_level("ERROR"):
        r = direct.post(
            "/predict", json={"inputs": [ZERO]}, headers={"X-API-Key": api_keys["gold"]}
        )
    assert r.status_code == 500
    rid = r.headers["x-request-id"]
    assert r.json() == {
        "error": {"code": "internal_error", "message": f"internal error (request id {rid})"}
    }
    assert "secret internals" not in r.text
    logged = [rec for rec in caplog.records if rec.exc_info and rec.exc_info[1] is not None]
    assert any("secret internals" in str(rec.exc_info[1]) for rec in logged)  # type: ignore[index]
