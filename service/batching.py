"""Dynamic, tier-aware batching: requests of any key and tier share one forward pass.

The queue is bounded (a full queue answers 503 at once, it never blocks a client), the forward
pass runs on a worker thread off the event loop, requests whose caller was cancelled (the HTTP
layer cancels a request whose client went away) are dropped before the forward pass, and `stop()`
drains what was accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from .errors import Unavailable

log = logging.getLogger(__name__)


class Sized(Protocol):
    """What the batcher needs to know of a work item."""

    rows: int


T = TypeVar("T", bound=Sized)


@dataclass
class Pending(Generic[T]):
    """A queued work item and the future its caller awaits (cancelled if the caller left)."""

    item: T
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.perf_counter)


async def collect_batch(
    queue: asyncio.Queue[Pending[T]], max_rows: int, max_wait: float
) -> list[Pending[T]]:
    """Take one item (waiting for it), then more until `max_rows` rows or `max_wait` seconds.

    An item that would push the batch over `max_rows` waits for the next batch, except the first,
    which always goes (a single request may be larger than a batch).
    """
    first = await queue.get()
    batch, rows = [first], first.item.rows
    deadline = time.perf_counter() + max_wait
    while rows < max_rows:
        try:
            nxt = queue.get_nowait()
        except asyncio.QueueEmpty:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                nxt = await asyncio.wait_for(queue.get(), remaining)
            except TimeoutError:
                break
        if rows + nxt.item.rows > max_rows:
            # Put it back at the front: asyncio.Queue has no push-front, so keep it for next time.
            queue._queue.appendleft(nxt)  # type: ignore[attr-defined]
            break
        batch.append(nxt)
        rows += nxt.item.rows
    return batch


class Batcher(Generic[T]):
    """Runs `run_batch(items) -> results` (one result or exception per item) on batched items."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[T]], list[Any]],
        max_rows: int = 32,
        max_wait: float = 0.002,
        queue_size: int = 256,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self.max_rows = max_rows
        self.max_wait = max_wait
        self._queue: asyncio.Queue[Pending[T]] = asyncio.Queue(maxsize=queue_size)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aim-forward")
        self._worker: asyncio.Task[None] | None = None
        self._accepting = False
        self._in_flight = 0
        self._on_depth = on_depth or (lambda _d: None)

    @property
    def alive(self) -> bool:
        """False once the worker has stopped (shut down, or died): the server is then not ready."""
        return self._worker is not None and not self._worker.done()

    def check_capacity(self) -> None:
        """Refuse at once (503) when the queue is full or closed, before any work is spent on
        a request that could not be queued: under overload, cheap refusals keep goodput up."""
        if not self._accepting:
            raise Unavailable("the server is shutting down", headers={"Retry-After": "1"})
        if self._queue.full():
            raise Unavailable(
                "the request queue is full, try again shortly", headers={"Retry-After": "1"}
            )

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._accepting = True
        self._worker = asyncio.get_running_loop().create_task(self._loop(), name="aim-batcher")

    async def submit(self, item: T) -> Any:
        """Queue an item and wait for its result. Raises `Unavailable` at once if full/closed.

        Cancelling the caller cancels the item: it is skipped if its batch has not run yet.
        """
        if not self._accepting:
            raise Unavailable("the server is shutting down", headers={"Retry-After": "1"})
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(Pending(item, future))
        except asyncio.QueueFull:
            raise Unavailable(
                "the request queue is full, try again shortly", headers={"Retry-After": "1"}
            ) from None
        self._in_flight += 1
        self._on_depth(self._queue.qsize())
        try:
            return await future
        finally:
            self._in_flight -= 1

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await collect_batch(self._queue, self.max_rows, self.max_wait)
            self._on_depth(self._queue.qsize())
            live = [p for p in batch if not p.future.done()]
            if not live:
                continue
            now = time.perf_counter()
            for p in live:
                p.item.queue_wait = now - p.enqueued  # type: ignore[attr-defined]
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run_batch, [p.item for p in live]
                )
            except Exception as exc:
                log.exception("batch failed")
                results = [exc] * len(live)
            for p, result in zip(live, results, strict=True):
                if p.future.done():
                    continue
                if isinstance(result, BaseException):
                    p.future.set_exception(result)
                else:
                    p.future.set_result(result)

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, finish what was accepted (bounded by `timeout`), then stop the worker."""
        self._accepting = False
        deadline = time.perf_counter() + timeout
        while (self._in_flight > 0 or not self._queue.empty()) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while not self._queue.empty():
            p = self._queue.get_nowait()
            if not p.future.done():
                p.future.set_exception(Unavailable("the server is shutting down"))
        self._executor.shutdown(wait=True)


async def submit_until_disconnect(
    batcher: Batcher[Any], item: Any, receive: Callable[[], Awaitable[Any]]
) -> Any:
    """`batcher.submit(item)`, cancelled if the ASGI `receive` reports the client went away.

    Called once the body has been read, so the next message `receive` yields is the
    disconnect (uvicorn), and the watcher costs nothing while the request is served.
    """
    task = asyncio.ensure_future(batcher.submit(item))

    async def watch() -> None:
        while True:
            message = await receive()
            if message.get("type") == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    finally:
        watcher.cancel()
