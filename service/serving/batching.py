"""Tier-aware batching: requests of any key and tier share one forward pass, higher tiers first.

The waiting room is ``queue.py``'s :class:`TierQueue`. :class:`Worker` is what the vision
:class:`Batcher` and the generation scheduler share: the queue, one worker thread off the event
loop, the accept flag, start, the capacity check before a body is parsed, and a stop that drains
what was accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic

from ..errors import Unavailable
from .queue import Pending, T, TierQueue, collect_batch

log = logging.getLogger(__name__)

_RETRY = {"Retry-After": "1"}


class Worker(Generic[T]):
    """A tier queue served by one worker thread; subclasses write `_loop` and `_reject`.

    ``_open`` counts accepted requests not yet answered: `stop` waits for it to reach 0.
    """

    thread_name = "aim-worker"

    def __init__(
        self,
        max_rows: int = 32,
        max_wait: float = 0.002,
        queue_size: int = 256,
        on_depth: Callable[[int], None] | None = None,
        on_shed: Callable[[str], None] | None = None,
    ) -> None:
        self.max_rows = max_rows
        self.max_wait = max_wait
        self._queue: TierQueue[T] = TierQueue(queue_size)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.thread_name)
        self._worker: asyncio.Task[None] | None = None
        self._accepting = False
        self._open = 0
        self._on_depth = on_depth or (lambda _d: None)
        self._on_shed = on_shed or (lambda _t: None)

    @property
    def alive(self) -> bool:
        """False once the worker has stopped (shut down, or died): the server is then not ready."""
        return self._worker is not None and not self._worker.done()

    def start(self) -> None:
        self._accepting = True
        self._worker = asyncio.get_running_loop().create_task(self._loop(), name=self.thread_name)

    def check_capacity(self, rank: int = 0, tier: str = "") -> None:
        """Refuse at once (503) when the queue is closed, or full with nobody of a lower tier
        than ``rank`` to displace, before any work is spent on the request: under overload,
        cheap refusals keep goodput up."""
        if not self._accepting:
            raise Unavailable("the server is shutting down", headers=_RETRY)
        if not self._queue.admits(rank):
            self._on_shed(tier)
            raise Unavailable("the request queue is full, try again shortly", headers=_RETRY)

    def _enqueue(self, pending: Pending[T]) -> None:
        """Queue a request (checked as `check_capacity` does), shedding a lower tier's if full."""
        self.check_capacity(pending.rank, pending.tier)
        displaced = self._queue.put(pending)
        self._open += 1
        if displaced is not None:
            self._on_shed(displaced.tier)
            self._reject(
                displaced,
                Unavailable("displaced by a higher tier, try again shortly", headers=_RETRY),
            )
        self._on_depth(self._queue.qsize())

    async def _loop(self) -> None:  # pragma: no cover - every worker has its own
        raise NotImplementedError

    def _reject(self, pending: Pending[T], error: Exception) -> None:
        """End a queued request with ``error`` (it never ran); counts it off ``_open``."""
        raise NotImplementedError  # pragma: no cover

    def _abort(self) -> None:
        """At the end of `stop`'s grace period: end the running work (nothing by default)."""

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, let accepted requests finish (for up to ``timeout`` seconds), then end
        the running work and the waiting requests with ``Unavailable``."""
        self._accepting = False
        deadline = time.perf_counter() + timeout
        while self._open > 0 and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        self._abort()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while not self._queue.empty():
            self._reject(self._queue.get_nowait(), Unavailable("the server is shutting down"))
        await asyncio.to_thread(self._executor.shutdown, wait=True)


class Batcher(Worker[T]):
    """Runs `run_batch(items) -> results` (one result or exception per item) on batched items.

    A batch runs on the forward thread, so the event loop keeps reading and answering while it does;
    or, when ``on_loop_below_s`` is set, recent batches ran faster than that and fewer requests wait
    than a batch holds, on the event loop itself. Why: on CPU every torch call of a batch gives up
    the GIL and has to wait for it back while the loop is busy, and with every client waiting on the
    same batch the loop has little to do meanwhile; for the shipped digits model (about 4 ms a
    batch) running on the loop served 20–40 % more requests in alternating runs
    (docs/PERFORMANCE.md, "The forward on the event loop"). A slow model (recent batches over the
    bound) or a GPU one (None: the GPU computes while the loop reads) keeps the thread.
    """

    thread_name = "aim-forward"
    RECENT = 0.2
    """Weight of the newest batch in the running mean of batch times."""
    PATIENCE = 0.1
    """How long a batch may wait for requests already in the server, as a share of recent batch
    times (``collect_batch``): 20 ms for a 200 ms ViT batch, under `max_wait` for the digits."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[T]], list[Any]],
        on_loop_below_s: float | None = None,
        in_server: Callable[[], int] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._run_batch = run_batch
        self.on_loop_below_s = on_loop_below_s
        self.in_server = in_server
        """The inference requests inside the server now (the edge's count), or None."""
        self.batch_s: float | None = None
        """Running mean of recent batches' run time (the first batch sets it; None before)."""

    @property
    def runs_on_loop(self) -> bool:
        """Batches run on the event loop (without a backlog of a batch): on_loop_below_s is set
        and recent batches ran faster than it."""
        bound = self.on_loop_below_s
        return bound is not None and (self.batch_s is None or self.batch_s < bound)

    async def submit(
        self,
        item: T,
        rank: int = 0,
        tier: str = "",
        receive: Callable[[], Awaitable[Any]] | None = None,
    ) -> Any:
        """Queue an item and wait for its result. Raises `Unavailable` at once if full/closed,
        or later if a higher tier displaces it from a full queue.

        Cancelling the caller cancels the item: it is skipped if its batch has not run yet. So
        does the client going away, when ``receive`` (its ASGI receive) is given: the watcher
        cancels the result's future itself, so a request costs no task of its own around this.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(Pending(item, future, rank=rank, tier=tier))
        watcher = (
            asyncio.ensure_future(watch_disconnect(receive, future.cancel)) if receive else None
        )
        try:
            return await future
        finally:
            self._open -= 1
            if watcher is not None:
                watcher.cancel()

    def _reject(self, pending: Pending[T], error: Exception) -> None:
        if not pending.future.done():  # `submit` counts it off `_open` when it wakes
            pending.future.set_exception(error)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            patience = self.PATIENCE * (self.batch_s or 0.0)
            batch = await collect_batch(
                self._queue, self.max_rows, self.max_wait, patience, self.in_server
            )
            self._on_depth(self._queue.qsize())
            live = [p for p in batch if not p.future.done()]
            if not live:
                continue
            now = time.perf_counter()
            for p in live:
                p.item.queue_wait = now - p.enqueued  # type: ignore[attr-defined]
            items = [p.item for p in live]
            # Only without a backlog of a batch or more: then the clients wait on this batch
            # (and a few stragglers on the next) and the loop has little to do meanwhile. With
            # a backlog (overload) the loop keeps reading, refusing and answering while the
            # thread runs the batch. Not "nothing waits": a straggler or two behind almost
            # every batch then kept the thread for good, at the thread's lower throughput.
            on_loop = self.runs_on_loop and self._queue.qsize() < self.max_rows
            try:
                if on_loop:
                    results = self._run_batch(items)
                else:
                    results = await loop.run_in_executor(self._executor, self._run_batch, items)
            except Exception as exc:
                log.exception("batch failed")
                results = [exc] * len(live)
            took = time.perf_counter() - now
            last = self.batch_s
            self.batch_s = took if last is None else last + self.RECENT * (took - last)
            for p, result in zip(live, results, strict=True):
                if p.future.done():
                    continue
                if isinstance(result, BaseException):
                    p.future.set_exception(result)
                else:
                    p.future.set_result(result)


async def watch_disconnect(receive: Callable[[], Awaitable[Any]], gone: Callable[[], Any]) -> None:
    """Call ``gone()`` when the ASGI ``receive`` reports that the client went away.

    Started once the body has been read, so the next message `receive` yields is the
    disconnect (uvicorn), and the watcher costs nothing while the request is served.
    """
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            gone()
            return
