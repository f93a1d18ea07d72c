"""The generation scheduler: concurrent requests decode together, tokens stream back as they come.

Continuous batching. The scheduler keeps one :class:`DecodeBatch` running on its worker thread,
one step per executor call. Between two steps it admits waiting requests into the running batch
(:func:`take_ready`: highest tiers first, at most ``max_rows`` rows, and at most ``token_budget``
tokens computed in the step: one per running row plus each joiner's prompt), so a new request
waits for one step, not for a whole batch; rows that finish or whose client went away leave the
batch. When nothing runs, it waits for a request, then up to ``max_wait`` for more, as the vision
batcher does. ``continuous=False`` gives static batching (a batch runs to its end before the next
is taken), kept for comparison (``bench/generation.py``) and for models whose KV cache cannot be
merged (:meth:`CausalLM.cache_merges`).

Every row has its own σ, keyed seed, focus, temperature, top-p and sampling seed, so one forward
pass per step serves any mix of keys and tiers, and a request's text does not depend on its
batch-mates. Each token goes from the worker thread to its job's asyncio queue
(``call_soon_threadsafe``) as soon as its step is done. The waiting queue is the worker base's
tier queue: bounded, higher tiers first, the lowest tier shed first. ``stop`` stops accepting,
lets accepted requests finish (bounded by a timeout), then ends what is left with a 503.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import Unavailable
from ..modulation import NoiseSource
from ..observability.metrics import Metrics
from ..serving.batching import Worker
from ..serving.engine import InferenceFailed
from ..serving.queue import Pending, collect_batch, take_ready
from .decode import DecodeBatch
from .job import GenerationJob, Token
from .request import GenerationRequest

if TYPE_CHECKING:
    from ..models.causal_lm import CausalLM

log = logging.getLogger(__name__)

DEFAULT_TOKEN_BUDGET = 2048


class GenerationScheduler(Worker[GenerationJob]):
    """Decodes generation requests on one worker thread, joining new ones into the running batch.

    The interface the routes use: :meth:`check_capacity` before parsing a body, :meth:`submit`
    for a parsed request, then read :meth:`GenerationJob.tokens` and call
    :meth:`GenerationJob.cancel` when the client goes away; :meth:`start` and :meth:`stop` belong
    to the app's life cycle.
    """

    thread_name = "aim-decode"

    def __init__(
        self,
        lm: CausalLM,
        source: NoiseSource,
        metrics: Metrics | None = None,
        continuous: bool = True,
        token_budget: int = DEFAULT_TOKEN_BUDGET,
        **options: Any,
    ) -> None:
        """``options`` are the :class:`Worker`'s (``max_rows``, ``max_wait``, ``queue_size``,
        ``on_depth``, ``on_shed``; shed requests count in ``metrics`` by default)."""
        self.metrics = metrics or Metrics()
        options.setdefault("on_shed", self.metrics.observe_shed)
        super().__init__(**options)
        self.lm = lm
        self.source = source
        self.continuous = continuous
        self.token_budget = token_budget
        self._aborting = threading.Event()  # stop: end the running rows at the next step
        self._batch: DecodeBatch | None = None
        self._jobs: dict[int, GenerationJob] = {}  # live rows of the batch and their jobs
        self._last: dict[int, float] = {}  # when each live row's last token (or arrival) was
        self._produced: set[int] = set()  # live rows that have had their first token
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

    # Event loop side ----------------------------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                admitted = await self._admit()
                self._on_depth(self._queue.qsize())
                now = time.perf_counter()
                for p in admitted:
                    p.item.queue_wait = now - p.enqueued
                jobs = [p.item for p in admitted if not p.item.cancelled]
                self._open -= len(admitted) - len(jobs)  # gone before they started
                ended = await loop.run_in_executor(self._executor, self._advance, jobs)
                self._open -= ended
        except asyncio.CancelledError:
            for job in list(self._jobs.values()):  # stopped mid-batch: nobody will decode them
                job._send(Unavailable("the server is shutting down"))
            raise

    async def _admit(self) -> list[Pending[GenerationJob]]:
        """The requests that start at the next step."""
        batch = self._batch
        if batch is None:  # idle: wait for work, then briefly for more
            return await collect_batch(self._queue, self.max_rows, self.max_wait)
        if not self.continuous or not batch.can_join:
            return []
        running = len(batch.running())
        return take_ready(
            self._queue,
            self.max_rows - running,
            self.token_budget - running,
            cost=lambda job: len(job.request.prompt_ids),
        )

    # Worker thread ------------------------------------------------------------------------------

    def _advance(self, jobs: list[GenerationJob]) -> int:
        """Admit ``jobs``, run one step, send its tokens; how many jobs ended (or were refused).
        Whatever goes wrong, every job of the batch hears of it."""
        ended = self._join(jobs)
        batch = self._batch
        if batch is None:
            return ended
        for row, job in self._jobs.items():
            if self._aborting.is_set():
                batch.cancel(row)
                job._send(Unavailable("the server is shutting down"))
            elif job.cancelled:
                batch.cancel(row)
        rows = len(batch.running())
        waits = [(job.tier, job.queue_wait) for job in jobs]
        try:
            tokens = batch.step() if rows else []
        except Exception:
            log.exception("generation batch failed")
            for job in self._jobs.values():
                job._send(InferenceFailed("generation failed"))
            batch.cancel_all()
            return ended + self._settle()
        now = time.perf_counter()
        if rows:
            self.metrics.observe_batch(rows, batch.forward_seconds, batch.modulation_seconds, waits)
        for row, token in enumerate(tokens):
            if token is None:
                continue
            job = self._jobs[row]
            first = row not in self._produced
            self.metrics.observe_token(job.tier, first, now - self._last[row])
            self._produced.add(row)
            self._last[row] = now
            job._send(Token(token, batch.finish_reason(row)))
        return ended + self._settle()

    def _join(self, jobs: list[GenerationJob]) -> int:
        """Add ``jobs`` to the batch (a new one if none runs); a request the batch refuses fails
        alone. Returns how many were refused."""
        refused = 0
        for job in jobs:
            try:
                if self._batch is None:
                    self._batch = DecodeBatch(self.lm, [job.request], self.source)
                    self.batches += 1
                    row = 0
                else:
                    (row,) = self._batch.add([job.request])
            except Exception:
                log.exception("generation request refused by the batch")
                job._send(InferenceFailed("generation failed"))
                refused += 1
                continue
            self._jobs[row] = job
            self._last[row] = job.arrived  # time to first token counts from arrival
        return refused

    def _settle(self) -> int:
        """Forget rows that have ended, and the batch once all have; how many jobs ended."""
        batch = self._batch
        assert batch is not None
        ended = [row for row in self._jobs if batch.finish_reason(row) is not None]
        for row in ended:
            del self._jobs[row]
            self._last.pop(row, None)
            self._produced.discard(row)
        if batch.done:
            self._batch = None
            self._jobs.clear()
            self._last.clear()
            self._produced.clear()
        return len(ended)
