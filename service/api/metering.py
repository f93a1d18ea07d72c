"""Usage metering at the edge: one `UsageNote` per request, filled in by the routes (who is
calling, at which tier, how many items and tokens), recorded with the final status once the
answer has gone out.

The status is the one the client got, so `requests`, `items` and `tokens` count answered (2xx)
work only, and everything else an identified account receives counts as an error. A request
that never identified an account (no key, an unknown key) is not an account's usage, nor is one
whose client went away before its answer started (a body cut short is not the client's 422):
its quota reservation is given back.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..access.accounting import Accounting, Reservation

log = logging.getLogger(__name__)
T = TypeVar("T")
_NOTE = "aim.usage"


@dataclass
class UsageNote:
    """What one request used; routes fill it in as they learn it."""

    account: str | None = None
    tier: str | None = None
    items: int = 0
    tokens: int = 0
    generation: bool = False
    reservation: Reservation | None = None
    """The quota units taken at admission, settled when the answer is out."""

    @property
    def units(self) -> int:
        """What quotas count: generated tokens for a generation model, else inputs."""
        return self.tokens if self.generation else self.items


def _note(scope: MutableMapping[str, Any]) -> UsageNote | None:
    note = scope.get(_NOTE)
    return note if isinstance(note, UsageNote) else None


def note_caller(scope: MutableMapping[str, Any], account: str, tier: str, items: int = 0) -> None:
    """The account and the tier served (after any lowering) this request is billed to, and its
    items (inputs; one prompt for a generation model)."""
    note = _note(scope)
    if note is not None:
        note.account, note.tier, note.items = account, tier, items


def note_reservation(scope: MutableMapping[str, Any], reservation: Reservation | None) -> None:
    note = _note(scope)
    if note is not None:
        note.reservation = reservation


async def count_tokens(
    scope: MutableMapping[str, Any], tokens: AsyncIterator[T]
) -> AsyncIterator[T]:
    """Pass `tokens` through, counting the generated ones (the end-of-sequence token, which is
    not part of the text, is not counted)."""
    note = _note(scope)
    if note is not None:
        note.generation = True
    async for token in tokens:
        if note is not None and getattr(token, "finish_reason", None) != "stop":
            note.tokens += 1
        yield token


class MeteringMiddleware:
    """Records each identified request's usage with the status its client received."""

    def __init__(self, app: ASGIApp, accounting: Accounting) -> None:
        self.app = app
        self.accounting = accounting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        note = UsageNote()
        scope[_NOTE] = note
        status = 499  # the client went away before an answer started: not billed

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception:
            status = 500
            raise
        finally:
            if note.account is not None and note.tier is not None:
                _record(self.accounting, note, None if status == 499 else status)


def _record(accounting: Accounting, note: UsageNote, status: int | None) -> None:
    assert note.account is not None and note.tier is not None
    try:
        if status is None:  # abandoned by its client: nothing billed, the reservation returned
            accounting.settle(note.reservation, 0)
            return
        accounting.record(
            note.account,
            note.tier,
            status,
            note.items,
            note.tokens,
            note.units,
            note.reservation,
        )
    except Exception:  # metering must never break a request (its answer is already out)
        log.exception("usage not recorded")
