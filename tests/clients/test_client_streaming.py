"""`stream()`: server-sent events become `StreamEvent`s, for the sync and the async client."""

from __future__ import annotations

import json

import httpx
import pytest
from aim_client import (
    AimClient,
    APIError,
    AsyncAimClient,
    AuthenticationError,
    InvalidResponseError,
    StreamEvent,
)
from aim_client import ConnectionError as AimConnectionError
from aim_client._streaming import EventReader

pytestmark = pytest.mark.unit

TOKENS = [(5, "the"), (9, " cat"), (2, " sat")]


def sse(*events: object, done: bool = True, newline: str = "\n") -> bytes:
    lines = [f"data: {json.dumps(e)}{newline}{newline}" for e in events]
    if done:
        lines.append(f"data: [DONE]{newline}{newline}")
    return "".join(lines).encode()


def token_events() -> list[dict[str, object]]:
    return [{"token": t, "text": piece} for t, piece in TOKENS]


FINAL = {"finish_reason": "length", "text": "the cat sat"}
EXPECTED = [
    StreamEvent(text="the", token=5),
    StreamEvent(text=" cat", token=9),
    StreamEvent(text=" sat", token=2),
    StreamEvent(text="the cat sat", finish_reason="length"),
]


def event_stream(body: bytes, status: int = 200) -> httpx.Response:
    return httpx.Response(status, content=body, headers={"Content-Type": "text/event-stream"})


def test_stream_yields_token_events_then_the_final_event(aim, server):
    server.reply(event_stream(sse(*token_events(), FINAL)))

    events = aim.stream("once", max_new_tokens=3)

    assert events == EXPECTED
    assert events[-1].is_final
    assert not any(e.is_final for e in events[:-1])
    assert json.loads(server.last.content)["stream"] is True
    assert server.last.headers["Accept"] == "text/event-stream"


def test_crlf_line_endings_are_understood(aim, server):
    server.reply(event_stream(sse(*token_events(), FINAL, newline="\r\n")))

    assert aim.stream("once") == EXPECTED


def test_lines_split_across_chunks_are_joined(aim, server):
    body = sse(*token_events(), FINAL, newline="\r\n")
    server.reply(lambda request: tracked_response(TrackedStream(body, chunk_size=5)))

    assert aim.stream("once") == EXPECTED


def test_error_status_is_raised_when_iteration_starts(aim, server, error):
    server.reply(error(401, code="unauthenticated", message="unknown key"))

    with pytest.raises(AuthenticationError):
        aim.stream("once")


def test_stream_is_retried_before_the_first_event(aim, server, error, sleeps):
    server.reply(error(503, headers={"Retry-After": "1"}), event_stream(sse(FINAL)))

    events = aim.stream("once")

    assert events == [StreamEvent(text="the cat sat", finish_reason="length")]
    assert sleeps == [1.0]


def test_error_event_mid_stream_raises(aim, server):
    body = sse(token_events()[0], {"error": {"code": "internal_error", "message": "boom"}})
    server.reply(event_stream(body))

    with pytest.raises(APIError, match="boom") as caught:
        aim.stream("once")

    assert caught.value.code == "internal_error"


def test_stream_cut_before_the_final_event_raises(aim, server):
    server.reply(event_stream(sse(*token_events(), done=False)))

    with pytest.raises(AimConnectionError, match="ended before its final event"):
        aim.stream("once")


def test_final_event_without_done_marker_is_enough(aim, server):
    server.reply(event_stream(sse(*token_events(), FINAL, done=False)))

    assert aim.stream("once") == EXPECTED


def test_json_answer_to_a_stream_request_becomes_one_final_event(aim, server):
    payload = {
        "model": "m",
        "tier": "t",
        "text": "all at once",
        "tokens": [1],
        "finish_reason": "stop",
    }
    server.reply(httpx.Response(200, json=payload))

    assert aim.stream("once") == [StreamEvent(text="all at once", finish_reason="stop")]


def test_event_that_is_not_json_raises(aim, server):
    server.reply(event_stream(b"data: {not json\n\n"))

    with pytest.raises(InvalidResponseError, match="not JSON"):
        aim.stream("once")


def test_reader_follows_the_sse_format():
    reader = EventReader()
    lines = [
        ": a comment, ignored",
        "id: 1",
        "retry: 1000",
        'data: {"token": 1,',
        'data: "text": "multi-line"}',
        "",
        "",  # a blank line with no data dispatches nothing
        'data:{"finish_reason": "stop", "text": "no space after the colon"}',
        "",
        "data: [DONE]",
        "",
        'data: {"token": 2, "text": "after done, ignored"}',
        "",
    ]

    events = [event for line in lines for event in reader.feed(line)]

    assert events == [
        StreamEvent(text="multi-line", token=1),
        StreamEvent(text="no space after the colon", finish_reason="stop"),
    ]
    assert reader.done


def test_reader_flushes_a_last_event_without_blank_line():
    reader = EventReader()
    reader.feed(json.dumps({"finish_reason": "stop", "text": "x"}).join(["data: ", ""]))

    assert reader.close() == [StreamEvent(text="x", finish_reason="stop")]


def test_error_typed_event_raises():
    reader = EventReader(status=200, request_id="r9")
    reader.feed("event: error")
    reader.feed('data: {"code": "overloaded", "message": "try later"}')

    with pytest.raises(APIError) as caught:
        reader.feed("")

    assert (caught.value.code, caught.value.request_id) == ("overloaded", "r9")


# --- closing early releases the connection -----------------------------------------------------


class TrackedStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body sent in small chunks, that records whether the client closed it."""

    def __init__(self, body: bytes, chunk_size: int = 16) -> None:
        self.chunks = [body[i : i + chunk_size] for i in range(0, len(body), chunk_size)]
        self.closed = False

    def __iter__(self):
        yield from self.chunks

    async def __aiter__(self):
        for chunk in self.chunks:
            yield chunk

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


def tracked_response(body: TrackedStream) -> httpx.Response:
    return httpx.Response(200, stream=body, headers={"Content-Type": "text/event-stream"})


def test_leaving_a_sync_stream_early_closes_the_response(server):
    body = TrackedStream(sse(*token_events(), FINAL))
    server.reply(lambda request: tracked_response(body))

    with AimClient("http://aim.test", transport=httpx.MockTransport(server)) as client:
        with client.stream("once") as events:
            first = next(events)

        assert first == EXPECTED[0]
        assert body.closed


@pytest.mark.asyncio
async def test_leaving_an_async_stream_early_closes_the_response(server):
    body = TrackedStream(sse(*token_events(), FINAL))
    server.reply(lambda request: tracked_response(body))

    async with AsyncAimClient("http://aim.test", transport=httpx.MockTransport(server)) as client:
        async with client.stream("once") as events:
            first = await events.__anext__()

        assert first == EXPECTED[0]
        assert body.closed


def test_nothing_is_sent_until_iteration_starts(server):
    with AimClient("http://aim.test", transport=httpx.MockTransport(server)) as client:
        events = client.stream("once")
        assert server.requests == []
        events.close()

    assert server.requests == []


@pytest.mark.asyncio
async def test_async_stream_iterates_with_async_for(server):
    server.reply(event_stream(sse(*token_events(), FINAL)))

    async with AsyncAimClient("http://aim.test", transport=httpx.MockTransport(server)) as client:
        events = [event async for event in client.stream("once")]

    assert events == EXPECTED
