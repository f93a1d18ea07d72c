"""One generation request inside the scheduler: its job, the tokens it gets back, its seed.

This is the interface routes build on (``/predict``, the OpenAI routes): submit a
:class:`GenerationRequest` to the scheduler, read :meth:`GenerationJob.tokens` (one
:class:`Token` per step, the last with a finish reason; errors raised as ``ServiceError``), and
call :meth:`GenerationJob.cancel` when the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections.abc import AsyncIterator, Sequence
from typing import NamedTuple

import torch

from .request import MAX_SEED, FinishReason, GenerationRequest


def sampling_seed(key_seed: int, prompt_ids: Sequence[int]) -> int:
    """The seed of a request's sampling generator: a hash of its keyed seed and its prompt.

    The same key asking the same prompt at the same tier samples the same text (asking again
    gains nothing); the keyed seed comes from the server secret, so a client cannot pick it.
    """
    h = hashlib.sha256(int(key_seed).to_bytes(8, "little", signed=False))
    h.update(torch.tensor(list(prompt_ids), dtype=torch.int64).numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little") & MAX_SEED


class Token(NamedTuple):
    """One token of one request; the last one carries the finish reason."""

    token_id: int
    """With ``finish_reason == "stop"`` this is the EOS token, which is not part of the text."""
    finish_reason: FinishReason | None


_CANCELLED = object()


class GenerationJob:
    """One request in the scheduler: what to decode, its tier, and the tokens it gets back."""

    rows = 1  # one sequence: `collect_batch` counts rows

    def __init__(
        self,
        request: GenerationRequest,
        tier: str,
        arrived: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.request = request
        self.tier = tier
        self.arrived = arrived
        """``time.perf_counter()`` when the HTTP request arrived: time to first token counts
        from here."""
        self.queue_wait = 0.0
        self._loop = loop
        self._events: asyncio.Queue[object] = asyncio.Queue()
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """The client went away: the row ends before the scheduler's next step (or never starts),
        and `tokens()` ends. Safe to call more than once, and after the job has finished."""
        if not self._cancelled.is_set():
            self._cancelled.set()
            self._events.put_nowait(_CANCELLED)

    async def tokens(self) -> AsyncIterator[Token]:
        """The tokens as the batch produces them, up to the one with a finish reason. Ends early
        once cancelled; raises the scheduler's error (``Unavailable``, ``InferenceFailed``)."""
        while True:
            event = await self._events.get()
            if event is _CANCELLED:
                return
            if isinstance(event, BaseException):
                raise event
            assert isinstance(event, Token)
            yield event
            if event.finish_reason is not None:
                return

    def _send(self, event: Token | BaseException) -> None:
        """From the worker thread: hand an event to the request's loop."""
        if self.cancelled:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
