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
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple

import torch

from ..batching import Pending, collect_batch
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


class GenerationScheduler:
    """Collects generation requests into batches and decodes them on one worker thread."""

    def __init__(
        self,
        lm: CausalLM,
        source: NoiseSource,
        metrics: Metrics | None = None,
        max_rows: int = 32,
        max_wait: float = 0.002,
        queue_size: int = 256,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self.lm = lm
        self.source = source
        self.metrics = metrics or Metrics()
        self.max_rows = max_rows
        self.max_wait = max_wait
        self._queue: asyncio.Queue[Pending[GenerationJob]] = asyncio.Queue(maxsize=queue_size)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aim-decode")
        self._worker: asyncio.Task[None] | None = None
        self._accepting = False
        self._open = 0  # jobs accepted and not yet through their batch
        self._abort = threading.Event()  # stop: end the running batch at its next step
        self._on_depth = on_depth or (lambda _d: None)
        self.batches = 0
        """Batches started so far (for tests and logs)."""

    @property
    def alive(self) -> bool:
        """False once the worker has stopped (shut down, or died)."""
        return self._worker is not None and not self._worker.done()

    @property
    def depth(self) -> int:
        """Requests waiting for a batch."""
        return self._queue.qsize()

    def start(self) -> None:
        self._accepting = True
        self._worker = asyncio.get_running_loop().create_task(self._loop(), name="aim-generate")

    def submit(self, request: GenerationRequest, tier: str, arrived: float) -> GenerationJob:
        """Queue a request; read its tokens from the returned job. Raises ``Unavailable`` at once
        when the queue is full or the scheduler is stopping."""
        if not self._accepting:
            raise Unavailable("the server is shutting down", headers={"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        job = GenerationJob(request, tier, arrived, loop)
        try:
            # The future is unused: results flow through the job, token by token.
            self._queue.put_nowait(Pending(job, loop.create_future()))
        except asyncio.QueueFull:
            raise Unavailable(
                "the request queue is full, try again shortly", headers={"Retry-After": "1"}
            ) from None
        self._open += 1
        self._on_depth(self._queue.qsize())
        return job

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
                    if self._abort.is_set():
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

    # Shutdown -----------------------------------------------------------------------------------

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, let accepted requests finish (for up to ``timeout`` seconds), then end
        the running batch and the waiting requests with ``Unavailable``."""
        self._accepting = False
        deadline = time.perf_counter() + timeout
        while self._open > 0 and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        self._abort.set()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while not self._queue.empty():
            self._queue.get_nowait().item._send(Unavailable("the server is shutting down"))
        await asyncio.to_thread(self._executor.shutdown, wait=True)
