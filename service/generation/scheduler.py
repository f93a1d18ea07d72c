"""The generation scheduler: concurrent requests decode together, tokens stream back as they come.

Static batching. The scheduler takes the waiting requests (up to ``max_rows``, waiting at most
``max_wait`` for more once it has one), runs one :class:`DecodeBatch` over them to the end on a
worker thread, then takes the next batch. Every row has its own σ, keyed seed, focus, temperature,
top-p and sampling seed, so one forward pass per step serves any mix of keys and tiers. Each token
goes from the worker thread to its request's asyncio queue (``call_soon_threadsafe``) as soon as its
step is done, so a stream sees tokens one by one; a row whose client went away is cancelled
before the next step and stops costing compute. Requests that arrive while a batch decodes wait
for the next one (continuous batching, joining a running batch, is not done: see
docs/GENERATION.md).

The waiting queue is bounded: a full queue answers 503 at once. ``stop`` stops accepting, lets
accepted requests finish (bounded by a timeout), then ends what is left with a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from ..batching import Pending, Worker, collect_batch
from ..engine import InferenceFailed
from ..errors import Unavailable
from ..metrics import Metrics
from ..modulation import NoiseSource
from .decode import DecodeBatch
from .request import MAX_SEED, FinishReason, GenerationRequest

if TYPE_CHECKING:
    from ..models.causal_lm import CausalLM

log = logging.getLogger(__name__)


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


class GenerationScheduler(Worker[GenerationJob]):
    """Collects generation requests into batches and decodes them on one worker thread.

    The interface the routes use: :meth:`check_capacity` before parsing a body, :meth:`submit`
    for a parsed request, then read :meth:`GenerationJob.tokens` and call
    :meth:`GenerationJob.cancel` when the client goes away; :meth:`start` and :meth:`stop` belong
    to the app's life cycle.
    """

    thread_name = "aim-decode"

    def __init__(
        self, lm: CausalLM, source: NoiseSource, metrics: Metrics | None = None, **options: Any
    ) -> None:
        """``options`` are the :class:`Worker`'s (``max_rows``, ``max_wait``, ``queue_size``,
        ``on_depth``, ``on_shed``; shed requests count in ``metrics`` by default)."""
        self.metrics = metrics or Metrics()
        options.setdefault("on_shed", self.metrics.observe_shed)
        super().__init__(**options)
        self.lm = lm
        self.source = source
        self._aborting = threading.Event()  # stop: end the running batch at its next step
        self.batches = 0
        """Batches started so far (for tests and logs)."""

    def submit(
        self, request: GenerationRequest, tier: str, arrived: float, rank: int = 0
    ) -> GenerationJob:
        """Queue a request of tier ``tier`` (its ``rank``: 0 is the highest tier, which goes
        first); read its tokens from the returned job. Raises ``Unavailable`` at once when the
        queue is full of requests of this tier or higher, or the scheduler is stopping; a job
        displaced later by a higher tier gets ``Unavailable`` from its ``tokens()``.

        ``arrived`` is ``time.perf_counter()`` when the HTTP request arrived (time to first token
        counts from there)."""
        loop = asyncio.get_running_loop()
        job = GenerationJob(request, tier, arrived, loop)
        # The future is unused: results flow through the job, token by token.
        self._enqueue(Pending(job, loop.create_future(), rank=rank, tier=tier))
        return job

    def _reject(self, pending: Pending[GenerationJob], error: Exception) -> None:
        pending.item._send(error)
        self._open -= 1

    def _abort(self) -> None:
        self._aborting.set()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await collect_batch(self._queue, self.max_rows, self.max_wait)
            self._on_depth(self._queue.qsize())
            jobs = [p.item for p in batch if not p.item.cancelled]
            now = time.perf_counter()
            for p in batch:
                p.item.queue_wait = now - p.enqueued
            try:
                if jobs:
                    self.batches += 1
                    await loop.run_in_executor(self._executor, self._decode, jobs)
            finally:
                self._open -= len(batch)

    # Worker thread ------------------------------------------------------------------------------

    def _decode(self, jobs: list[GenerationJob]) -> None:
        """Decode one batch to the end; whatever goes wrong, every job hears of it."""
        try:
            self._run(jobs)
        except Exception:
            log.exception("generation batch failed")
            for job in jobs:  # a job that has finished has stopped reading: no harm
                job._send(InferenceFailed("generation failed"))

    def _run(self, jobs: list[GenerationJob]) -> None:
        """Decode one batch to the end, sending each token to its job as its step finishes."""
        batch, jobs = self._start(jobs)
        if batch is None:
            return
        waits = [(job.tier, job.queue_wait) for job in jobs]
        last = [job.arrived for job in jobs]  # time to first token counts from arrival
        produced = [False] * len(jobs)
        try:
            while not batch.done:
                for row in batch.running():
                    if self._aborting.is_set():
                        batch.cancel(row)
                        jobs[row]._send(Unavailable("the server is shutting down"))
                    elif jobs[row].cancelled:
                        batch.cancel(row)
                if batch.done:
                    break
                rows = len(batch.running())
                tokens = batch.step()
                now = time.perf_counter()
                self.metrics.observe_batch(
                    rows, batch.forward_seconds, batch.modulation_seconds, waits
                )
                waits = []
                for row, token in enumerate(tokens):
                    if token is None:
                        continue
                    job = jobs[row]
                    self.metrics.observe_token(job.tier, not produced[row], now - last[row])
                    produced[row], last[row] = True, now
                    job._send(Token(token, batch.finish_reason(row)))
        except Exception:
            log.exception("generation batch failed")
            for row in batch.running():
                jobs[row]._send(InferenceFailed("generation failed"))

    def _start(self, jobs: list[GenerationJob]) -> tuple[DecodeBatch | None, list[GenerationJob]]:
        """A batch over ``jobs``; a request the batch refuses fails alone, the others go on."""
        try:
            return DecodeBatch(self.lm, [j.request for j in jobs], self.source), jobs
        except Exception:
            if len(jobs) == 1:
                log.exception("generation request refused by the batch")
                jobs[0]._send(InferenceFailed("generation failed"))
                return None, []
        good = []
        for job in jobs:
            good += self._start([job])[1]
        if not good:
            return None, []
        return DecodeBatch(self.lm, [j.request for j in good], self.source), good
