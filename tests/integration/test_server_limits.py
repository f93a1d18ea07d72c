"""The guarded uvicorn protocol on a real socket: header deadline, header size (431), refusals
written before the body is read, the keep-alive request bound, and the overload hook."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from service.errors import Unavailable
from service.observability.metrics import Metrics
from service.serving.overload import OverloadGuard
from service.serving.server import Refusal, ServerLimits, protocol_class

pytestmark = pytest.mark.integration


class App:
    """Answers 200 with the body length; counts the requests that reached it."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.calls += 1
        size, more = 0, True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(size).encode()})


@contextlib.contextmanager
def serving(
    app: Any, limits: ServerLimits, refuse: Any = None, protocol: Any = None
) -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        http=protocol or protocol_class(limits, refuse),
        log_config=None,
        lifespan="off",
        timeout_keep_alive=max(1, round(limits.keep_alive_s)),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def read_response(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


class Streaming:
    """Sends its head, then waits until told before the body (a stream not yet started)."""

    def __init__(self) -> None:
        self.go = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-length", b"4")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        while not self.go.is_set():
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"done"})


def counting_protocol(limits: ServerLimits, writes: list[bytes]) -> type[Any]:
    """The guarded protocol over a real transport whose writes are recorded."""

    class Counted:
        def __init__(self, transport: Any) -> None:
            self._transport = transport

        def write(self, data: bytes) -> None:
            writes.append(data)
            self._transport.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._transport, name)

    base = protocol_class(limits)

    class Protocol(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(Counted(transport))

    return Protocol


def test_an_answer_goes_out_in_one_write_and_a_held_head_at_the_next_turn() -> None:
    writes: list[bytes] = []
    protocol = counting_protocol(ServerLimits(), writes)
    streaming = Streaming()
    chunked = b"\r\n\r\n1\r\n3\r\n0\r\n\r\n"  # App sets no content-length
    for app, end in ((App(), chunked), (streaming, b"\r\n\r\ndone")):
        with (
            serving(app, ServerLimits(), protocol=protocol) as port,
            socket.create_connection(("127.0.0.1", port)) as s,
        ):
            writes.clear()
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
            s.settimeout(5)
            answer = s.recv(65536)
            if app is streaming:  # the head arrives alone, before the body is sent
                assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\n")
                assert len(writes) == 1
                streaming.go.set()
                answer += s.recv(65536)
                assert len(writes) == 2
            else:
                assert len(writes) == 1, writes  # head and body in one send()
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert answer.endswith(end)


def test_an_oversized_header_gets_431_and_the_connection_closes() -> None:
    with (
        serving(App(), ServerLimits(max_header_bytes=4096)) as port,
        socket.create_connection(("127.0.0.1", port)) as s,
    ):
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        answer = read_response(s)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert orjson.loads(body)["error"]["code"] == "header_too_large"


def test_an_unfinished_header_over_the_limit_gets_431_before_it_ends() -> None:
    """httptools buffers a header it has not finished: the limit counts raw bytes too."""
    with (
        serving(App(), ServerLimits(max_header_bytes=4096)) as port,
        socket.create_connection(("127.0.0.1", port)) as s,
    ):
        s.sendall(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 8192)  # no end of header
        assert read_response(s).startswith(b"HTTP/1.1 431 ")


def test_headers_under_the_limit_are_served() -> None:
    with serving(App(), ServerLimits(max_header_bytes=4096)) as port:
        r = httpx.get(f"http://127.0.0.1:{port}/", headers={"X-Mid": "a" * 3000})
    assert r.status_code == 200


def test_slow_header_clients_are_closed_while_others_are_served() -> None:
    """100 connections send one header byte every 0.2 s; a 1 s header deadline closes every
    one of them, while a normal client keeps getting answers on its own connection."""
    slow_count = 100
    with serving(App(), ServerLimits(header_timeout_s=1.0)) as port:
        slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(slow_count)]
        request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 200
        closed: set[int] = set()
        answers: list[int] = []

        def normal_client() -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
                for _ in range(40):
                    answers.append(c.post("/", content=b"x" * 100).status_code)
                    time.sleep(0.05)

        worker = threading.Thread(target=normal_client)
        worker.start()
        for step in range(len(request)):  # far longer than the deadline: 40 s at 0.2 s a byte
            for i, s in enumerate(slow):
                if i in closed:
                    continue
                try:
                    s.send(request[step : step + 1])
                except OSError:
                    closed.add(i)
            readable, _, _ = select.select(
                [s for i, s in enumerate(slow) if i not in closed], [], [], 0.2
            )
            for s in readable:
                with contextlib.suppress(OSError):
                    data = s.recv(4096)
                    if not data or data.startswith(b"HTTP/1.1 408 "):
                        closed.add(slow.index(s))
            if len(closed) == slow_count and not worker.is_alive():
                break
        worker.join(timeout=30)
        for s in slow:
            s.close()
    assert len(closed) == slow_count
    assert answers and set(answers) == {200}


def test_a_refusal_is_written_before_the_body_and_keeps_the_connection() -> None:
    app = App()
    seen: list[tuple[bytes, bytes]] = []

    def refuse(method: bytes, url: bytes, headers: Any, scope: Any) -> Refusal | None:
        seen.append((method, url))
        if method == b"POST" and url.startswith(b"/busy"):
            return Refusal(503, b'{"error": {"code": "unavailable"}}', ((b"retry-after", b"1"),))
        return None

    with (
        serving(app, ServerLimits(), refuse) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c,
    ):
        first = c.post("/busy?x=1", content=b"b" * 200_000)
        second = c.post("/busy", content=b"b" * 10)
        served = c.post("/other", content=b"b" * 10)
    assert (first.status_code, second.status_code, served.status_code) == (503, 503, 200)
    assert first.headers["retry-after"] == "1"
    assert first.json()["error"]["code"] == "unavailable"
    assert served.text == "10"  # the refused bodies did not leak into the next request
    assert app.calls == 1
    assert seen[0] == (b"POST", b"/busy?x=1")


class Unavailable503:
    """Answers 503 on /busy (as the gate, the batcher or readiness do), else 200."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        status = 503 if scope["path"] == "/busy" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def test_any_503_pauses_the_connection_as_a_refusal_does() -> None:
    limits = ServerLimits(refusal_pause_s=0.5)
    with (
        serving(Unavailable503(), limits) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c,
    ):
        c.get("/ok")  # connected
        started = time.monotonic()
        c.get("/ok")
        after_200 = time.monotonic() - started
        assert c.get("/busy").status_code == 503
        started = time.monotonic()
        assert c.get("/ok").status_code == 200  # same connection, read 0.5 s later
        after_503 = time.monotonic() - started
    assert after_503 >= 0.45, after_503
    assert after_200 < 0.45, after_200


def test_a_failing_refusal_hook_serves_the_request() -> None:
    def broken(method: bytes, url: bytes, headers: Any, scope: Any) -> Refusal | None:
        raise AttributeError("no such attribute")

    app = App()
    with serving(app, ServerLimits(), broken) as port:
        r = httpx.post(f"http://127.0.0.1:{port}/predict", content=b"x" * 10)
    assert (r.status_code, r.text, app.calls) == (200, "10", 1)


def test_a_connection_closes_after_its_request_bound() -> None:
    with (
        serving(App(), ServerLimits(max_requests_per_connection=2)) as port,
        socket.create_connection(("127.0.0.1", port)) as s,
    ):
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_response(s)
    assert answer.count(b"HTTP/1.1 200 ") == 2
    assert answer.lower().count(b"connection: close") == 1


class FullBatcher:
    """Full of silver when `full`: admits gold (rank 0 would displace a silver), not the rest."""

    def __init__(self) -> None:
        self.full = True
        self.depth = 0
        self.asked: list[tuple[int, str]] = []

    def check_capacity(self, rank: int = 0, tier: str = "") -> None:
        self.asked.append((rank, tier))
        if self.full and rank > 0:
            raise Unavailable("the request queue is full, try again shortly")


def fake_state(queue_size: int = 4, max_batch_size: int = 2) -> Any:
    from service.access.keys import KeyRecord, KeyStore, hash_key
    from service.access.tiers import build_tiers
    from service.config import TierConfig

    settings = type("S", (), {"queue_size": queue_size, "max_batch_size": max_batch_size})()
    records = [
        KeyRecord("g", "gold", hash_key("aim_gold")),
        KeyRecord("b", "bronze", hash_key("aim_bronze")),
    ]
    members = {
        "batcher": FullBatcher(),
        "metrics": Metrics(),
        "settings": settings,
        "keys": KeyStore(records),
        "tiers": build_tiers(
            [TierConfig(name="gold", sigma=0.0), TierConfig(name="bronze", sigma=4.0)],
            {"gold": 0.0, "bronze": 4.0},
        ),
    }
    return type("State", (), members)()


GOLD = [(b"x-api-key", b"aim_gold")]
BRONZE = [(b"authorization", b"Bearer aim_bronze")]


def test_the_overload_guard_refuses_only_inference_posts_while_the_queue_is_full() -> None:
    state = fake_state()
    guard = OverloadGuard(state)
    refused = guard(b"POST", b"/predict?x=1", BRONZE, {})
    assert refused is not None and refused.status == 503
    assert guard(b"POST", b"/v2/models/digits/infer", [], {}) is not None  # no key: lowest
    assert state.batcher.asked == [(1, "bronze"), (1 << 30, "none")]
    assert guard(b"POST", b"/predict", GOLD, {}) is None  # would displace a lower tier
    assert guard(b"GET", b"/predict", [], {}) is None
    assert guard(b"POST", b"/v2/models/digits", [], {}) is None
    state.batcher.full = False
    scope: dict[str, Any] = {}
    assert guard(b"POST", b"/predict", [], scope) is None
    assert guard.in_flight == 2
    assert state.in_server() == 2  # what the batcher's patience counts (collect_batch)
    scope["aim.admission"].release()
    assert guard.in_flight == 1 and state.in_server() == 1
    counted = state.metrics.requests.labels("none", "/predict", "503")._value.get()
    assert counted == 1  # the bronze refusal on /predict


def test_the_guard_ranks_a_request_by_the_key_authentication_takes() -> None:
    state = fake_state()
    guard = OverloadGuard(state)
    empty_then_bearer = [(b"x-api-key", b" "), (b"authorization", b"Bearer aim_bronze")]
    for headers in (empty_then_bearer, [(b"x-api-key", b"aim_gold"), *BRONZE], []):
        guard(b"POST", b"/predict", headers, {})
    assert state.batcher.asked == [(1, "bronze"), (0, "gold"), (1 << 30, "none")]


def test_the_guard_ranks_a_request_by_the_tier_it_will_be_served_at() -> None:
    """X-AIM-Tier lowers the rank (a gold key asking for bronze queues as bronze); it never
    raises it, and a tier the route will refuse (unknown, above the key's) ranks by the key."""
    state = fake_state()
    guard = OverloadGuard(state)
    cases = [
        [*GOLD, (b"x-aim-tier", b"bronze")],  # lowered: bronze
        [*GOLD, (b"x-aim-tier", b" bronze ")],  # as the route strips it
        [*BRONZE, (b"x-aim-tier", b"gold")],  # raising is refused later: ranked as bronze
        [*GOLD, (b"x-aim-tier", b"platinum")],  # unknown: 422 later, ranked by the key
        [*GOLD, (b"x-aim-tier", b"")],  # blank: the key's own tier
        [*GOLD, (b"x-aim-tier", b"bronze"), (b"x-aim-tier", b"gold")],  # the first one wins
        [(b"x-aim-tier", b"gold")],  # no key: below every tier whatever it asks
    ]
    for headers in cases:
        guard(b"POST", b"/predict", headers, {})
    assert state.batcher.asked == [
        (1, "bronze"),
        (1, "bronze"),
        (1, "bronze"),
        (0, "gold"),
        (0, "gold"),
        (1, "bronze"),
        (1 << 30, "none"),
    ]


async def test_a_gold_key_lowered_to_bronze_waits_behind_gold() -> None:
    """Past max_in_flight, a waiting gold request starts before a gold key's bronze request
    that arrived first: the edge orders them by the tier served, not by the key."""
    state = fake_state(queue_size=4, max_batch_size=1)
    state.batcher.full = False
    guard = OverloadGuard(state)
    guard.max_in_flight = 1
    first: dict[str, Any] = {}
    lowered: dict[str, Any] = {}
    gold: dict[str, Any] = {}
    assert guard(b"POST", b"/predict", GOLD, first) is None
    assert guard(b"POST", b"/predict", [*GOLD, (b"x-aim-tier", b"bronze")], lowered) is None
    assert guard(b"POST", b"/predict", GOLD, gold) is None
    assert guard.waiting == 2
    lowered_turn = asyncio.ensure_future(lowered["aim.admission"].wait())
    gold_turn = asyncio.ensure_future(gold["aim.admission"].wait())
    first["aim.admission"].release()
    await asyncio.sleep(0)
    assert gold_turn.done() and gold_turn.result() is True
    assert not lowered_turn.done()
    gold["aim.admission"].release()
    await asyncio.sleep(0)
    assert lowered_turn.result() is True
    lowered["aim.admission"].release()
    assert guard.in_flight == 0 and guard.waiting == 0


def test_by_default_one_batch_runs_while_batches_run_on_the_loop_else_two() -> None:
    state = fake_state(max_batch_size=8)
    guard = OverloadGuard(state)
    assert guard.max_in_flight == 16  # the forward thread: the next batch fills meanwhile
    state.batcher.runs_on_loop = True
    assert guard.max_in_flight == 8  # nothing overlaps a batch on the loop
    state.settings.max_in_flight = 3  # AIM_MAX_IN_FLIGHT wins either way
    assert OverloadGuard(state).max_in_flight == 3


async def test_past_max_in_flight_requests_wait_highest_tier_first() -> None:
    """Running requests are capped (twice the batch: 4); more park, gold ahead of bronze. While
    some wait and gold is present, bronze runs at most an eighth of a batch (at least 1)."""
    state = fake_state(queue_size=4, max_batch_size=2)
    state.batcher.full = False
    guard = OverloadGuard(state)
    running: list[dict[str, Any]] = [{} for _ in range(4)]
    assert all(guard(b"POST", b"/predict", BRONZE, sc) is None for sc in running)
    assert guard.in_flight == 4 and guard.waiting == 0
    bronze: dict[str, Any] = {}
    gold: dict[str, Any] = {}
    assert guard(b"POST", b"/predict", BRONZE, bronze) is None  # parked, not refused
    assert guard(b"POST", b"/predict", GOLD, gold) is None
    assert guard.waiting == 2 and state.metrics.admission_waiting._value.get() == 2
    gold_turn = asyncio.ensure_future(gold["aim.admission"].wait())
    bronze_turn = asyncio.ensure_future(bronze["aim.admission"].wait())
    await asyncio.sleep(0)
    assert not gold_turn.done() and not bronze_turn.done()
    running[0]["aim.admission"].release()
    await asyncio.sleep(0)
    assert gold_turn.done() and gold_turn.result() is True and not bronze_turn.done()
    running[1]["aim.admission"].release()
    await asyncio.sleep(0)
    assert not bronze_turn.done()  # a slot is free, but 2 bronze still run beside gold
    running[2]["aim.admission"].release()
    running[3]["aim.admission"].release()
    await asyncio.sleep(0)
    assert bronze_turn.result() is True
    assert guard.in_flight == 2 and guard.waiting == 0
    bronze["aim.admission"].release()
    bronze["aim.admission"].release()  # idempotent
    assert guard.in_flight == 1


async def test_a_waiter_cancelled_as_it_starts_frees_its_slot() -> None:
    state = fake_state(queue_size=2, max_batch_size=1)
    state.batcher.full = False
    guard = OverloadGuard(state)
    guard.max_in_flight = 1
    first: dict[str, Any] = {}
    second: dict[str, Any] = {}
    assert guard(b"POST", b"/predict", GOLD, first) is None
    assert guard(b"POST", b"/predict", GOLD, second) is None
    waiting = asyncio.ensure_future(second["aim.admission"].wait())
    await asyncio.sleep(0)
    first["aim.admission"].release()  # the second starts ...
    waiting.cancel()  # ... and its task is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert guard.in_flight == 0 and guard.waiting == 0


async def test_a_heavy_top_tier_does_not_throttle_the_lower_ones() -> None:
    """Gold sending a quarter or more of the requests is load itself: bronze is not held to the
    lower-tier share, only to the running cap and the waiting order."""
    state = fake_state(queue_size=4, max_batch_size=2)
    state.batcher.full = False
    guard = OverloadGuard(state)
    running: list[dict[str, Any]] = [{} for _ in range(4)]
    for i, sc in enumerate(running):
        assert guard(b"POST", b"/predict", GOLD if i % 2 else BRONZE, sc) is None
    bronze: dict[str, Any] = {}
    assert guard(b"POST", b"/predict", BRONZE, bronze) is None  # waits: 4 running
    turn = asyncio.ensure_future(bronze["aim.admission"].wait())
    running[1]["aim.admission"].release()  # a gold one ends: 2 bronze + 1 gold run
    await asyncio.sleep(0)
    assert turn.result() is True  # gold sent 2 of 5: bronze takes the free slot


async def test_a_full_waiting_room_refuses_displaces_and_expires_lower_tiers() -> None:
    state = fake_state(queue_size=2, max_batch_size=1)  # 2 run, 2 wait
    state.batcher.full = False
    guard = OverloadGuard(state)
    guard.wait_s = 0.05
    for _ in range(2):
        assert guard(b"POST", b"/predict", GOLD, {}) is None
    parked: list[dict[str, Any]] = [{}, {}]
    assert all(guard(b"POST", b"/predict", BRONZE, sc) is None for sc in parked)
    refused = guard(b"POST", b"/predict", BRONZE, {})
    assert refused is not None and refused.status == 503  # room full of bronze: no room
    gold: dict[str, Any] = {}
    assert guard(b"POST", b"/predict", GOLD, gold) is None  # displaces the newest bronze
    assert await parked[1]["aim.admission"].wait() is False
    assert await parked[0]["aim.admission"].wait() is False  # expired after 0.05 s
    assert await gold["aim.admission"].wait() is False  # so did gold: nobody ended meanwhile
    assert guard.waiting == 0
    shed = state.metrics.shed.labels("bronze")._value.get()
    assert shed == 1  # the protocol refusal; the gate counts the two waiters it answers


async def test_the_gate_answers_a_refused_waiter_with_503_and_frees_slots() -> None:
    state = fake_state(queue_size=2, max_batch_size=1)
    state.batcher.full = False
    guard = OverloadGuard(state)
    guard.max_in_flight = 1
    ran: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        ran.append(scope["path"])

    gated = guard.gate(app)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    first: dict[str, Any] = {"type": "http", "path": "/first"}
    second: dict[str, Any] = {"type": "http", "path": "/second"}
    third: dict[str, Any] = {"type": "http", "path": "/third"}
    assert guard(b"POST", b"/predict", GOLD, first) is None
    assert guard(b"POST", b"/predict", GOLD, second) is None
    assert guard(b"POST", b"/predict", GOLD, third) is None  # both wait
    await gated(first, None, send)
    assert guard.in_flight == 1 and guard.waiting == 1  # the second runs in the first's slot
    await gated(second, None, send)
    await gated(third, None, send)
    assert ran == ["/first", "/second", "/third"] and guard.in_flight == 0 and not sent
    guard.wait_s = 0.01
    a: dict[str, Any] = {"type": "http", "path": "/a"}
    b: dict[str, Any] = {"type": "http", "path": "/b"}
    assert guard(b"POST", b"/predict", BRONZE, a) is None
    assert guard(b"POST", b"/predict", BRONZE, b) is None
    await gated(b, None, send)  # waited 0.01 s behind /a, which has not ended
    assert sent[0]["status"] == 503 and (b"retry-after", b"1") in sent[0]["headers"]
    assert b"unavailable" in sent[1]["body"] and ran[-1] == "/third"
    a["aim.admission"].release()
    assert guard.in_flight == 0
    await gated({"type": "http", "path": "/other"}, None, send)  # no admission: passes
    assert ran[-1] == "/other"


def test_aim_serve_releases_every_admission(tmp_path: Path) -> None:
    """A real `aim serve` whose guard runs at most 2 requests (twice the batch of 1): many more
    sequential requests, answered 200, 401, 422 or 413, never leave a slot taken (a leak would
    turn every later request into a 503)."""
    from service.access.keys import create_key

    from .conftest import CONFIG, start_server, stop_server

    keys_file = tmp_path / "keys.yaml"
    _, key = create_key(keys_file, "gold", "g")
    env = {"AIM_QUEUE_SIZE": "2", "AIM_MAX_BATCH_SIZE": "1", "AIM_MAX_BODY_BYTES": "2048"}
    server = start_server(tmp_path, CONFIG, keys_file, env)
    try:
        digit = [[0] * 8 for _ in range(8)]
        good = {"X-API-Key": key}
        statuses = []
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for _ in range(4):
                statuses.append(c.post("/predict", json={"inputs": [digit]}, headers=good))
                statuses.append(c.post("/predict", json={"inputs": [digit]}))
                statuses.append(c.post("/predict", json={"inputs": "x"}, headers=good))
                statuses.append(c.post("/predict", content=b"x" * 4096, headers=good))
            last = c.post("/predict", json={"inputs": [digit]}, headers=good)
    finally:
        stop_server(server)
    assert [r.status_code for r in statuses[:4]] == [200, 401, 422, 413]
    assert [r.status_code for r in statuses] == [200, 401, 422, 413] * 4
    assert last.status_code == 200
