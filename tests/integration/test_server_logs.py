"""`aim serve` writes JSON lines on stderr, uvicorn's own records included, with no colour codes."""

from __future__ import annotations

import json

import httpx
import pytest

from .conftest import LiveServer

pytestmark = pytest.mark.integration


def test_stderr_is_plain_json_lines(live_server: LiveServer) -> None:
    httpx.get(live_server.url + "/healthz", timeout=5)
    lines = [line for line in live_server.log().splitlines() if line.strip()]
    entries = []
    for line in lines:
        assert "\x1b" not in line and "\\u001b" not in line, line
        entries.append(json.loads(line))
    uvicorn_msgs = [e["msg"] for e in entries if e["logger"].startswith("uvicorn")]
    assert any("Uvicorn running on" in m for m in uvicorn_msgs), uvicorn_msgs
    assert all("color_message" not in e for e in entries)
