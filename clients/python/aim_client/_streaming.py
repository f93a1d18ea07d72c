"""Server-sent events of a generation stream, and the iterators `stream()` returns.

The server answers `"stream": true` with `text/event-stream`: one `data: {"token": id, "text":
"piece"}` event per token, a final `data: {"finish_reason": ..., "text": "full text"}`, then
`data: [DONE]`. `EventReader` turns lines into `StreamEvent`s and is shared by the sync and async
clients, which only differ in how they read lines.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Generator
from types import TracebackType

from ._errors import APIError, ConnectionError, InvalidResponseError
from ._types import StreamEvent, parse_stream_event

__all__ = ["AsyncStream", "EventReader", "Stream"]

DONE = "[DONE]"


class EventReader:
    """Decodes SSE lines (the WHATWG event-stream format) into `StreamEvent`s.

    Only `data` and `event` fields matter here; comments, `id` and `retry` are skipped. An event
    whose data is an error object, or whose type is `error`, raises `APIError`.
    """

    def __init__(self, *, status: int = 200, request_id: str | None = None) -> None:
        self._status = status
        self._request_id = request_id
        self._data: list[str] = []
        self._event_type = ""
        self.done = False
        """True once `[DONE]` arrived; later lines are ignored."""
        self.finished = False
        """True once the final event (the one with `finish_reason`) arrived."""

    def feed(self, line: str) -> list[StreamEvent]:
        """Take one line (without its line ending); return the events it completes."""
        if self.done:
            return []
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return []
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event_type = value
        return []

    def close(self) -> list[StreamEvent]:
        """Flush an event left without its blank line; raise if the stream ended too early."""
        events = self._dispatch()
        if not (self.done or self.finished):
            raise ConnectionError("the event stream ended before its final event")
        return events

    def _dispatch(self) -> list[StreamEvent]:
        data, event_type = "\n".join(self._data), self._event_type
        had_data = bool(self._data)
        self._data, self._event_type = [], ""
        if not had_data:
            return []
        if data.strip() == DONE:
            self.done = True
            return []
        try:
            payload = json.loads(data)
        except ValueError:
            raise InvalidResponseError(f"a stream event is not JSON: {data[:80]!r}") from None
        if isinstance(payload, dict) and ("error" in payload or event_type == "error"):
            raise self._error(payload)
        event = parse_stream_event(payload)
        if event.is_final:
            self.finished = True
        return [event]

    def _error(self, payload: dict[str, object]) -> APIError:
        error = payload.get("error", payload)
        details = error if isinstance(error, dict) else {"message": str(error)}
        field = details.get("field")
        return APIError(
            str(details.get("message") or "the server reported an error mid-stream"),
            status=self._status,
            code=str(details.get("code") or "stream_error"),
            field=str(field) if field is not None else None,
            request_id=self._request_id,
        )


class Stream:
    """The events of a generation stream; iterate it, ideally inside `with` to free the connection.

    The request is sent when iteration starts, so errors (`AuthenticationError`, ...) are raised
    by the first `next()`.
    """

    def __init__(self, events: Generator[StreamEvent, None, None]) -> None:
        self._events = events

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> StreamEvent:
        return next(self._events)

    def close(self) -> None:
        """Stop reading and release the connection; safe to call more than once."""
        self._events.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncStream:
    """The events of a generation stream; iterate it with `async for`, ideally inside `async with`.

    The request is sent when iteration starts, so errors are raised by the first `__anext__`.
    """

    def __init__(self, events: AsyncGenerator[StreamEvent, None]) -> None:
        self._events = events

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> StreamEvent:
        return await self._events.__anext__()

    async def close(self) -> None:
        """Stop reading and release the connection; safe to call more than once."""
        await self._events.aclose()

    async def aclose(self) -> None:
        """Alias of `close`, the name async generators use."""
        await self.close()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
