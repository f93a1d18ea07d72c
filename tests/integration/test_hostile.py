"""Hostile clients on real sockets (issue 23): whatever a connection does (upgrade, pipeline,
cut its body, send garbage, stall in its headers), every slot the edge guard gave out comes back,
pipelined requests pass the guard too, and a normal client is served afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from service.access.keys import create_key
from service.serving.server import RELEASE, Refusal, ServerLimits

from .conftest import CONFIG, start_server, stop_server
from .test_server_limits import App, serving

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from hostile import run_attack

pytestmark = pytest.mark.integration


class Ledger:
    """A refusal hook that reserves a token per request and counts the releases; refuses the
    requests whose URL contains `refuse`."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.held: set[int] = set()
        self.released = 0

    def __call__(
        self, method: bytes, url: bytes, headers: Any, scope: dict[str, Any]
    ) -> Refusal | None:
        self.seen.append(url)
        if b"refuse" in url:
            return Refusal(503, b'{"refused": true}')
        token = len(self.seen)
        self.held.add(token)

        def release() -> None:
            if token in self.held:
                self.held.remove(token)
                self.released += 1

        scope[RELEASE] = release
        return None

    def settle(self) -> None:
        deadline = time.monotonic() + 10
        while self.held and time.monotonic() < deadline:
            time.sleep(0.02)


def _post(path: str, body: bytes = b"{}") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def test_pipelined_requests_pass_the_hook_and_a_refused_one_is_answered_in_turn() -> None:
    ledger = Ledger()
    with serving(App(), ServerLimits(refusal_pause_s=0), ledger) as port:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(_post("/a") + _post("/refuse") + _post("/c"))
            answer = b""
            s.settimeout(10)
            while answer.count(b"HTTP/1.1 ") < 3:
                chunk = s.recv(65536)
                assert chunk, answer
                answer += chunk
        ledger.settle()
    assert ledger.seen == [b"/a", b"/refuse", b"/c"]  # every pipelined request was consulted
    statuses = [line.split()[1] for line in answer.split(b"\r\n") if line.startswith(b"HTTP/1.1")]
    assert statuses == [b"200", b"503", b"200"]  # in order: the refusal waited its turn
    assert b'{"refused": true}' in answer
    assert ledger.held == set() and ledger.released == 2


def test_an_upgrade_request_and_unstarted_pipelined_ones_release_their_reservation() -> None:
    ledger = Ledger()
    with serving(App(), ServerLimits(), ledger) as port:
        # A WebSocket upgrade on an HTTP route: uvicorn hands the connection over, no HTTP
        # request ever runs for it.
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(
                b"POST /predict HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n"
                b"Upgrade: websocket\r\n\r\n"
            )
            s.settimeout(2)
            with contextlib.suppress(TimeoutError):
                s.recv(1024)
        # A request whose body never comes, with two more queued behind it, then the close.
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(_post("/slow", b"x" * 10)[:-5])
            time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port)) as s:
            head = b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
            s.sendall(_post("/q") + _post("/r") + head)
            time.sleep(0.2)
        ledger.settle()
    assert ledger.seen == [b"/slow", b"/q", b"/r", b"/p"]  # an upgrade reserves nothing
    assert ledger.held == set(), f"{len(ledger.held)} reservations never released"


def test_a_thousand_hostile_connections_leave_no_slot_taken(tmp_path: Path) -> None:
    """The acceptance of issue 23 against a real `aim serve`: 1,000 connections with 200
    keyless upgrade POSTs and 100 pipelined bursts, a normal client meanwhile; then the in-flight
    and waiting gauges are 0 and a normal /predict answers 200."""
    keys_file = tmp_path / "keys.yaml"
    _, key = create_key(keys_file, "gold", "normal")
    server = start_server(tmp_path, CONFIG, keys_file, {"AIM_HEADER_TIMEOUT_S": "2"})
    try:
        report = asyncio.run(
            run_attack(server.url, key, connections=1000, upgrades=200, pipelined=100, hold_s=0.5)
        )
    finally:
        stop_server(server)
        log = server.log()
    print("\n".join(report.lines()))
    # Clients that leave are not server errors: no traceback, no "Exception in ASGI application".
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]
    gone = [line for line in log.splitlines() if "client disconnected before" in line]
    assert gone and all('"level": "info"' in g and '"request_id"' in g for g in gone)
    assert report.kinds["upgrade"] == 200 and report.kinds["pipelined"] == 100
    assert sum(report.kinds.values()) == 1000
    assert report.gauges == {"aim_admission_in_flight": 0, "aim_admission_waiting": 0}
    assert report.after == 200
    assert report.during[200] > 0
