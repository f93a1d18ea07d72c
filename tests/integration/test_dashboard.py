"""Every panel of the Grafana dashboard has data: its PromQL runs against a real Prometheus that
scrapes real, loaded services (the digits classifier, and a tiny LM for the generation panels)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import LiveServer, prometheus_server

pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/aim.json"


@pytest.fixture(scope="module")
def prometheus(
    live_server: LiveServer, lm_server: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with prometheus_server([live_server, lm_server], tmp_path_factory.mktemp("prom")) as url:
        yield url


def _load(vision: LiveServer, lm: LiveServer, stop: threading.Event) -> None:
    """Mixed traffic: every tier, a few refusals (for the errors panel), and generation."""
    digit = [[0.0] * 8 for _ in range(8)]
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            for tier in ("gold", "silver", "bronze"):
                key = vision.keys[tier][0]
                client.post(
                    vision.url + "/predict", json={"inputs": [digit]}, headers={"X-API-Key": key}
                )
            client.post(vision.url + "/predict", json={"inputs": [digit]})  # 401
            client.post(
                vision.url + "/predict",
                json={"inputs": [[1.0]]},
                headers={"X-API-Key": vision.keys["gold"][0]},
            )  # 422
            for tier in ("gold", "silver"):
                client.post(
                    lm.url + "/predict",
                    json={"prompt": "the cow says", "max_new_tokens": 6},
                    headers={"X-API-Key": lm.keys[tier][0]},
                )


def _panels() -> list[tuple[str, list[str]]]:
    data = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in data["panels"]:
        exprs = [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
        if exprs:
            panels.append((panel["title"], exprs))
    return panels


def test_every_dashboard_panel_has_data(
    prometheus: str, live_server: LiveServer, lm_server: LiveServer
) -> None:
    panels = _panels()
    assert len(panels) >= 8
    stop = threading.Event()
    loader = threading.Thread(target=_load, args=(live_server, lm_server, stop), daemon=True)
    loader.start()
    empty: dict[str, list[str]] = {}
    try:
        deadline = time.monotonic() + 90
        pending = dict(panels)
        while pending and time.monotonic() < deadline:
            time.sleep(2)
            for title, exprs in list(pending.items()):
                results = [_query(prometheus, e) for e in exprs]
                # A panel has data when one of its queries returns a series with a number.
                if any(_has_number(r) for r in results):
                    del pending[title]
        empty = pending
    finally:
        stop.set()
        loader.join(timeout=60)
    assert not empty, f"panels without data: {sorted(empty)}"


def _query(base: str, expr: str) -> list[Any]:
    try:
        r = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10)
    except httpx.HTTPError:
        return []
    body = r.json()
    assert body.get("status") == "success", (expr, body)
    result: list[Any] = body["data"]["result"]
    return result


def _has_number(result: list[Any]) -> bool:
    return any(s["value"][1] not in ("NaN", "+Inf", "-Inf") for s in result)
