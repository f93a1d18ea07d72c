"""The tier-ordered waiting room and batching over it, as free functions.

:class:`TierQueue` is the bounded waiting room: it hands out the highest tier's oldest request
first (rank 0 is the highest tier), and when it is full a request of a higher tier displaces the
newest request of the lowest tier waiting (that one gets 503 with ``Retry-After``); a request
that could displace nobody is refused at once. :func:`collect_batch` is batching as a free
function over that queue, and :func:`take_ready` takes what fits without waiting (rows joining
a running decode batch).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar


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
    rank: int = 0
    """The tier's rank: 0 is the highest tier, which goes first."""
    tier: str = ""
    """The tier's name, for metrics."""


class TierQueue(Generic[T]):
    """A bounded queue that serves lower ranks (higher tiers) first, each rank in arrival order."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"`maxsize` has to be at least 1, but is {maxsize}")
        self.maxsize = maxsize
        self._lanes: dict[int, deque[Pending[T]]] = {}
        self._size = 0
        self._ready = asyncio.Event()

    def qsize(self) -> int:
        return self._size

    def empty(self) -> bool:
        return self._size == 0

    def full(self) -> bool:
        return self._size >= self.maxsize

    def admits(self, rank: int) -> bool:
        """A request of ``rank`` would be queued: there is room, or a lower tier to displace."""
        return not self.full() or self._lowest() > rank

    def put(self, pending: Pending[T]) -> Pending[T] | None:
        """Queue ``pending``; returns the request it displaced, if the queue was full. Raises
        ``asyncio.QueueFull`` when it is full of requests of ``pending``'s tier or higher."""
        displaced = None
        if self.full():
            lowest = self._lowest()
            if lowest <= pending.rank:
                raise asyncio.QueueFull
            displaced = self._lanes[lowest].pop()  # the newest of the lowest tier
            self._size -= 1
            if not self._lanes[lowest]:
                del self._lanes[lowest]
        self._lanes.setdefault(pending.rank, deque()).append(pending)
        self._size += 1
        self._ready.set()
        return displaced

    def push_front(self, pending: Pending[T]) -> None:
        """Put back a request just taken, at the head of its tier (room is not checked)."""
        self._lanes.setdefault(pending.rank, deque()).appendleft(pending)
        self._size += 1
        self._ready.set()

    def get_nowait(self) -> Pending[T]:
        """The oldest request of the highest tier waiting; ``asyncio.QueueEmpty`` if none."""
        if not self._lanes:
            raise asyncio.QueueEmpty
        rank = min(self._lanes)
        lane = self._lanes[rank]
        pending = lane.popleft()
        if not lane:
            del self._lanes[rank]
        self._size -= 1
        if not self._size:
            self._ready.clear()
        return pending

    async def get(self) -> Pending[T]:
        """Wait for a request, then :meth:`get_nowait` (cancelling the wait loses nothing)."""
        while not self._size:
            await self._ready.wait()
        return self.get_nowait()

    def _lowest(self) -> int:
        return max(self._lanes, default=-1)


async def collect_batch(
    queue: TierQueue[T],
    max_rows: int,
    max_wait: float,
    patience: float = 0.0,
    in_server: Callable[[], int] | None = None,
) -> list[Pending[T]]:
    """Take one item (waiting for it), then more until `max_rows` rows or `max_wait` seconds.

    Past `max_wait`, and up to `patience` seconds in all, it keeps waiting while ``in_server()``
    (the inference requests inside the server: being read, decoded, queued or answered) is
    more than the items taken: on a compute-bound model the clients of the last batch come back
    a few ms after it, and a batch sent without them leaves a straggler or two to run alone
    (ViT-Ti on 2 cores, 8 clients: batches of 7 and 1, the 1 at twice the cost per image). A
    lone client is never kept waiting: it is the only request in the server.

    An item that would push the batch over `max_rows` waits for the next batch, except the first,
    which always goes (a single request may be larger than a batch).
    """
    first = await queue.get()
    batch, rows = [first], first.item.rows
    start = time.perf_counter()
    deadline, longest = start + max_wait, start + max(max_wait, patience)
    while rows < max_rows:
        try:
            nxt = queue.get_nowait()
        except asyncio.QueueEmpty:
            more = in_server is not None and in_server() > len(batch)
            remaining = (longest if more else deadline) - time.perf_counter()
            if remaining <= 0:
                break
            # Waiting for requests still on their way: look again every 2 ms, as one may also
            # end without reaching the queue (refused, bad input, client gone).
            step = min(remaining, 0.002) if more else remaining
            try:
                nxt = await asyncio.wait_for(queue.get(), step)
            except TimeoutError:
                continue
        if rows + nxt.item.rows > max_rows:
            queue.push_front(nxt)  # it keeps its place for the next batch
            break
        batch.append(nxt)
        rows += nxt.item.rows
    return batch


def take_ready(
    queue: TierQueue[T], max_rows: int, max_tokens: int, cost: Callable[[T], int]
) -> list[Pending[T]]:
    """Take what is waiting now (never wait), highest tiers first, while it fits: at most
    `max_rows` rows and `max_tokens` of ``cost``. The first item taken may exceed `max_tokens`
    alone, so a large request is never starved by a stream of small ones; the item that does
    not fit keeps its place at the head of its tier."""
    taken: list[Pending[T]] = []
    rows = tokens = 0
    while True:
        try:
            nxt = queue.get_nowait()
        except asyncio.QueueEmpty:
            break
        more = cost(nxt.item)
        if rows + nxt.item.rows > max_rows or (taken and tokens + more > max_tokens):
            queue.push_front(nxt)
            break
        taken.append(nxt)
        rows += nxt.item.rows
        tokens += more
    return taken
