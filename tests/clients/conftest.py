"""Fixtures for the client tests.

`server` is a scripted fake server behind `httpx.MockTransport`; `aim` is a client of it, once
as `AimClient` and once as `AsyncAimClient` behind the same synchronous surface, so each test
body checks that the twins behave alike. Nothing sleeps: the clients' `_sleep` records delays.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from aim_client import AimClient, AsyncAimClient, StreamEvent

API_KEY = "aim-test-key-7f3c9b2e41d8a6f0"
BASE_URL = "http://aim.test"

Reply = httpx.Response | type[httpx.TransportError] | Callable[[httpx.Request], httpx.Response]


class FakeServer:
    """Answers each request with the next scripted reply (the last one repeats) and records it.

    A reply is an `httpx.Response` (copied, so it can repeat), an `httpx.TransportError` subclass
    (raised, as a real transport would), or a function of the request.
    """

    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.requests: list[httpx.Request] = []

    def reply(self, *replies: Reply) -> FakeServer:
        self.script.extend(replies)
        return self

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.script:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, httpx.Response):
            return httpx.Response(item.status_code, headers=item.headers, content=item.content)
        if isinstance(item, type) and issubclass(item, httpx.TransportError):
            raise item("simulated failure", request=request)
        return item(request)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def body(self, index: int = -1) -> Any:
        import json

        return json.loads(self.requests[index].content)


class Twin:
    """One client, sync or async, called through the same synchronous surface."""

    def __init__(self, client: AimClient | AsyncAimClient) -> None:
        self.client = client
        self.is_async = isinstance(client, AsyncAimClient)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not self.is_async or not callable(attr):
            return attr

        def run(*args: Any, **kwargs: Any) -> Any:
            return asyncio.run(attr(*args, **kwargs))

        return run

    def stream(self, *args: Any, **kwargs: Any) -> list[StreamEvent]:
        """All events of a stream, read inside the stream's context manager."""
        client = self.client
        if isinstance(client, AimClient):
            with client.stream(*args, **kwargs) as events:
                return list(events)

        async def collect() -> list[StreamEvent]:
            assert isinstance(client, AsyncAimClient)
            async with client.stream(*args, **kwargs) as events:
                return [event async for event in events]

        return asyncio.run(collect())

    def close(self) -> None:
        if isinstance(self.client, AsyncAimClient):
            asyncio.run(self.client.close())
        else:
            self.client.close()


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def sleeps() -> list[float]:
    """The delays the client under test slept, in order."""
    return []


def build_client(
    kind: str, server: FakeServer, sleeps: list[float], **kwargs: Any
) -> AimClient | AsyncAimClient:
    kwargs.setdefault("api_key", API_KEY)
    transport = httpx.MockTransport(server)
    client: AimClient | AsyncAimClient
    if kind == "sync":
        client = AimClient(BASE_URL, transport=transport, **kwargs)
        client._sleep = sleeps.append
    else:

        async def record_sleep(delay: float) -> None:
            sleeps.append(delay)

        client = AsyncAimClient(BASE_URL, transport=transport, **kwargs)
        client._sleep = record_sleep
    return client


@pytest.fixture(params=["sync", "async"])
def make_aim(
    request: pytest.FixtureRequest, server: FakeServer, sleeps: list[float]
) -> Iterator[Callable[..., Twin]]:
    """Builds clients of `server` with the given arguments; each test runs once per twin."""
    made: list[Twin] = []

    def make(**kwargs: Any) -> Twin:
        twin = Twin(build_client(request.param, server, sleeps, **kwargs))
        made.append(twin)
        return twin

    yield make
    for twin in made:
        twin.close()


@pytest.fixture
def aim(make_aim: Callable[..., Twin]) -> Twin:
    """A client of `server` with the test key and default settings, sync or async."""
    return make_aim()


def classification_payload(**extra: Any) -> dict[str, Any]:
    return {
        "model": "digits",
        "tier": "silver",
        "task": "classification",
        "predictions": [
            {
                "label": "3",
                "index": 3,
                "score": 0.91,
                "top_k": [
                    {"label": "3", "index": 3, "score": 0.91},
                    {"label": "8", "index": 8, "score": 0.05},
                ],
            }
        ],
        **extra,
    }


@pytest.fixture
def ok_classification() -> httpx.Response:
    """A 200 answer to /predict with one classification."""
    return httpx.Response(200, json=classification_payload(), headers={"X-Request-ID": "req-1"})


def error_response(
    status: int,
    code: str = "some_error",
    message: str = "something went wrong",
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return httpx.Response(status, json={"error": error}, headers=headers)


@pytest.fixture
def error() -> Callable[..., httpx.Response]:
    """Builds a contract error answer: `error(429, headers={"Retry-After": "2"})`."""
    return error_response


@pytest.fixture
def api_key() -> str:
    """The key every test client sends; it must never leak into a repr, message or log."""
    return API_KEY
