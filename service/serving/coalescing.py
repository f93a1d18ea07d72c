"""One `send()` per answer: a response's head goes out with the body that follows it.

Used by the server's protocol (server.py) as its transport.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

_UNAVAILABLE = STATUS_LINE[503]


class HeadWithBody:
    """A transport that sends a response's head together with the body that follows it.

    uvicorn writes the status line and headers on `http.response.start` and the body on
    `http.response.body`: two `send()` calls per answer. On this machine's VM they took a fifth
    of the event loop under load (py-spy --gil). A head is held here until the next write,
    which normally comes in the same turn of the event loop, and goes out with it; a head with
    no body after it this turn (a stream that has not started) goes out at the next turn.
    Everything else is passed to the real transport; `close` sends what is held first.
    """

    def __init__(self, transport: Any, loop: Any) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None
        self.unavailable = False
        """The last head written was a 503: the protocol then pauses the connection."""
        # Asked several times per request: bound here, not looked up through __getattr__.
        self.is_closing = transport.is_closing
        self.pause_reading = transport.pause_reading
        self.resume_reading = transport.resume_reading
        self.get_extra_info = transport.get_extra_info

    def write(self, data: bytes) -> None:
        if self._transport.is_closing():
            # Closed under a running request (a 400 for a bad pipelined request, the peer gone
            # before uvicorn saw it): uvloop raises on a write, which would log an ERROR
            # traceback for what is only a client that left. Nobody is there to read it.
            self._head = None
            return
        head, self._head = self._head, None
        if head is not None:
            self._transport.write(head + data)
        elif data[:5] == b"HTTP/" and data[-4:] == b"\r\n\r\n":
            self._head = data
            self.unavailable = data.startswith(_UNAVAILABLE)
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        head, self._head = self._head, None
        if head is not None and not self._transport.is_closing():
            self._transport.write(head)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
