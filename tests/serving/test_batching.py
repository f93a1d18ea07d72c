"""The batcher on plain queues (no server): sizes, waits, tier order, shedding, drain, gone
clients."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from service.errors import Unavailable
from service.serving.batching import Batcher
from service.serving.queue import Pending, TierQueue, collect_batch, take_ready

pytestmark = pytest.mark.unit


@dataclass
class Item:
    rows: int
    value: int = 0
    queue_wait: float = 0.0


def _pending(item: Item, rank: int = 0) -> Pending[Item]:
    return Pending(item, asyncio.get_running_loop().create_future(), rank=rank, tier=f"t{rank}")


@pytest.mark.parametrize(
    ("sizes", "max_rows", "expected"),
    [
        ([1] * 10, 4, 4),
        ([2, 2, 2], 5, 2),
        ([8, 1], 4, 1),  # a request larger than a batch still goes, alone
        ([1, 1], 32, 2),  # fewer than max: the wait ends the batch
    ],
)
async def test_collect_batch_respects_rows_and_wait(
    sizes: list[int], max_rows: int, expected: int
) -> None:
    queue: TierQueue[Item] = TierQueue(64)
    for s in sizes:
        queue.put(_pending(Item(s)))
    batch = await collect_batch(queue, max_rows, max_wait=0.01)
    assert len(batch) == expected
    assert queue.qsize() == len(sizes) - expected


async def test_collect_batch_keeps_order_when_an_item_does_not_fit() -> None:
    queue: TierQueue[Item] = TierQueue(64)
    for i, s in enumerate([2, 3, 1]):
        queue.put(_pending(Item(s, value=i)))
    first = await collect_batch(queue, 4, 0.0)
    second = await collect_batch(queue, 4, 0.0)
    assert [p.item.value for p in first] == [0]
    assert [p.item.value for p in second] == [1, 2]


async def test_collect_batch_waits_for_requests_already_in_the_server() -> None:
    # Three requests are in the server; two reach the queue 30 ms after the first (their
    # clients just got the last batch's answers): the batch waits for them, past max_wait.
    queue: TierQueue[Item] = TierQueue(64)
    queue.put(_pending(Item(1, value=0)))

    async def later() -> None:
        await asyncio.sleep(0.03)
        for v in (1, 2):
            queue.put(_pending(Item(1, value=v)))

    task = asyncio.ensure_future(later())
    batch = await collect_batch(queue, 32, max_wait=0.0, patience=30.0, in_server=lambda: 3)
    await task
    assert [p.item.value for p in batch] == [0, 1, 2]


async def test_collect_batch_never_keeps_a_lone_request_waiting() -> None:
    # One request in the server, a minute of patience: the batch goes at once (the guard is a
    # deadline for a hang, not a timing assertion).
    queue: TierQueue[Item] = TierQueue(64)
    queue.put(_pending(Item(1)))
    collect = collect_batch(queue, 32, max_wait=0.0, patience=60.0, in_server=lambda: 1)
    batch = await asyncio.wait_for(collect, 10.0)
    assert len(batch) == 1


async def test_collect_batch_stops_waiting_when_patience_runs_out() -> None:
    # The edge counts a request that never reaches the queue (say it was refused): the batch
    # still goes once patience runs out.
    queue: TierQueue[Item] = TierQueue(64)
    queue.put(_pending(Item(1)))
    collect = collect_batch(queue, 32, max_wait=0.0, patience=0.05, in_server=lambda: 2)
    batch = await asyncio.wait_for(collect, 10.0)
    assert len(batch) == 1


@pytest.mark.parametrize(
    ("ranks", "max_rows", "expected"),
    [
        ([2, 0, 1, 0, 2], 8, [0, 0, 1, 2, 2]),  # higher tiers first, each in arrival order
        ([2, 2, 1, 0], 2, [0, 1]),  # a small batch takes the highest tiers waiting
        ([1, 1, 1], 8, [1, 1, 1]),
    ],
)
async def test_collect_batch_takes_higher_tiers_first(
    ranks: list[int], max_rows: int, expected: list[int]
) -> None:
    queue: TierQueue[Item] = TierQueue(64)
    for i, rank in enumerate(ranks):
        queue.put(_pending(Item(1, value=i), rank))
    batch = await collect_batch(queue, max_rows, max_wait=0.0)
    assert [p.rank for p in batch] == expected
    values = [p.item.value for p in batch]
    for rank in set(expected):  # arrival order within a tier
        mine = [v for v, p in zip(values, batch, strict=True) if p.rank == rank]
        assert mine == sorted(mine)


@pytest.mark.parametrize(
    ("queued", "arriving", "displaced"),
    [
        ([0, 2, 1, 2], 0, 3),  # the newest of the lowest tier goes
        ([0, 2, 1, 2], 1, 3),
        ([1, 1, 0], 0, 1),  # lowest tier queued is 1: its newest
        ([0, 1, 2], 2, None),  # the lowest tier displaces nobody
        ([0, 0, 1], 1, None),  # nor does a tier displace its own
        ([1, 0, 0], 0, 0),
    ],
)
async def test_a_full_queue_sheds_the_newest_of_the_lowest_tier(
    queued: list[int], arriving: int, displaced: int | None
) -> None:
    queue: TierQueue[Item] = TierQueue(len(queued))
    for i, rank in enumerate(queued):
        assert queue.put(_pending(Item(1, value=i), rank)) is None
    assert queue.full()
    newcomer = _pending(Item(1, value=99), arriving)
    assert queue.admits(arriving) == (displaced is not None)
    if displaced is None:
        with pytest.raises(asyncio.QueueFull):
            queue.put(newcomer)
        assert queue.qsize() == len(queued)
        return
    out = queue.put(newcomer)
    assert out is not None and out.item.value == displaced
    assert queue.qsize() == len(queued)
    left = sorted(p.item.value for p in [queue.get_nowait() for _ in range(len(queued))])
    assert left == sorted([i for i in range(len(queued)) if i != displaced] + [99])


@pytest.mark.parametrize(
    ("costs", "max_rows", "max_tokens", "expected"),
    [
        ([5, 5, 5], 8, 100, 3),  # all fit
        ([5, 5, 5], 2, 100, 2),  # rows bound
        ([40, 40, 40], 8, 100, 2),  # token budget bound
        ([500, 1], 8, 100, 1),  # the first goes even over budget; the next waits
        ([1, 500], 8, 100, 1),
        ([5], 0, 100, 0),  # no room: nothing is taken
    ],
)
async def test_take_ready_respects_rows_and_token_budget(
    costs: list[int], max_rows: int, max_tokens: int, expected: int
) -> None:
    queue: TierQueue[Item] = TierQueue(64)
    for i, c in enumerate(costs):
        queue.put(_pending(Item(1, value=c), rank=i % 2))
    taken = take_ready(queue, max_rows, max_tokens, cost=lambda item: item.value)
    assert len(taken) == expected
    assert queue.qsize() == len(costs) - expected
    assert [p.rank for p in taken] == sorted(p.rank for p in taken)  # higher tiers first


def _echo(items: Sequence[Item]) -> list[object]:
    return [ValueError("bad") if it.value < 0 else it.value * 10 for it in items]


async def test_results_and_errors_go_to_their_own_requests() -> None:
    batcher: Batcher[Item] = Batcher(_echo, max_rows=8, max_wait=0.005)
    batcher.start()
    results = await asyncio.gather(
        *(batcher.submit(Item(1, v)) for v in (1, -1, 3)), return_exceptions=True
    )
    assert results[0] == 10 and results[2] == 30
    assert isinstance(results[1], ValueError)
    await batcher.stop()


async def test_full_queue_answers_503_at_once() -> None:
    def slow(items: Sequence[Item]) -> list[object]:
        time.sleep(0.3)
        return [0] * len(items)

    batcher: Batcher[Item] = Batcher(slow, max_rows=1, max_wait=0.0, queue_size=1)
    batcher.start()
    first = asyncio.ensure_future(batcher.submit(Item(1)))
    await asyncio.sleep(0.05)  # the worker is now busy with the first item
    second = asyncio.ensure_future(batcher.submit(Item(1)))  # fills the queue
    await asyncio.sleep(0)
    started = time.perf_counter()
    with pytest.raises(Unavailable) as err:
        await batcher.submit(Item(1))
    assert time.perf_counter() - started < 0.1  # refused without waiting for the model
    assert err.value.status == 503 and err.value.headers["Retry-After"] == "1"
    assert await first == 0 and await second == 0
    await batcher.stop()


async def test_a_higher_tier_displaces_a_queued_lower_one_with_503() -> None:
    def slow(items: Sequence[Item]) -> list[object]:
        time.sleep(0.2)
        return [it.value for it in items]

    shed: list[str] = []
    batcher: Batcher[Item] = Batcher(
        slow, max_rows=1, max_wait=0.0, queue_size=2, on_shed=shed.append
    )
    batcher.start()
    running = asyncio.ensure_future(batcher.submit(Item(1, 0), 2, "bronze"))
    await asyncio.sleep(0.05)  # the worker is busy with it
    low = [asyncio.ensure_future(batcher.submit(Item(1, v), 2, "bronze")) for v in (1, 2)]
    await asyncio.sleep(0)
    with pytest.raises(Unavailable):  # full of its own tier: refused at once
        batcher.check_capacity(2, "bronze")
    assert shed == ["bronze"]
    high = asyncio.ensure_future(batcher.submit(Item(1, 3), 0, "gold"))
    await asyncio.sleep(0)
    with pytest.raises(Unavailable) as err:
        await low[1]  # the newest bronze request made room for gold
    assert err.value.status == 503 and err.value.headers["Retry-After"] == "1"
    assert shed == ["bronze", "bronze"]
    order = []
    for task in asyncio.as_completed([high, low[0]]):
        order.append(await task)
    assert order == [3, 1]  # gold before the bronze request that waited longer
    assert await running == 0
    await batcher.stop()


async def test_stop_drains_accepted_work_and_refuses_new() -> None:
    def slow(items: Sequence[Item]) -> list[object]:
        time.sleep(0.05)
        return [it.value for it in items]

    batcher: Batcher[Item] = Batcher(slow, max_rows=2, max_wait=0.0, queue_size=16)
    batcher.start()
    futures = [asyncio.ensure_future(batcher.submit(Item(1, v))) for v in range(6)]
    await asyncio.sleep(0)
    await batcher.stop()
    assert [f.result() for f in futures] == list(range(6))
    with pytest.raises(Unavailable):
        await batcher.submit(Item(1))


async def test_requests_of_gone_clients_are_dropped_before_the_forward_pass() -> None:
    seen: list[int] = []

    def record(items: Sequence[Item]) -> list[object]:
        seen.extend(it.value for it in items)
        return [0] * len(items)

    disconnect = asyncio.Event()

    async def receive() -> dict[str, str]:
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def never() -> dict[str, str]:
        await asyncio.Event().wait()
        return {}

    batcher: Batcher[Item] = Batcher(record, max_rows=8, max_wait=0.05)
    batcher.start()
    dropped = asyncio.ensure_future(batcher.submit(Item(1, 1), receive=receive))
    kept = asyncio.ensure_future(batcher.submit(Item(1, 2), receive=never))
    await asyncio.sleep(0.01)  # both queued, the batch still waiting for more
    disconnect.set()
    assert await kept == 0
    with pytest.raises(asyncio.CancelledError):
        await dropped
    assert seen == [2]
    await batcher.stop()


def _threads_of(delay: float, seen: list[int]) -> object:
    def run(items: Sequence[Item]) -> list[object]:
        seen.append(threading.get_ident())
        time.sleep(delay)
        return [it.value for it in items]

    return run


async def test_fast_batches_run_on_the_event_loop_slow_ones_on_the_forward_thread() -> None:
    loop_thread = threading.get_ident()
    fast: list[int] = []
    batcher: Batcher[Item] = Batcher(
        _threads_of(0.0, fast), on_loop_below_s=0.05, max_rows=1, max_wait=0.0
    )
    batcher.start()
    assert [await batcher.submit(Item(1, v)) for v in range(3)] == [0, 1, 2]
    assert fast == [loop_thread] * 3 and batcher.runs_on_loop
    # With a batch or more waiting (a backlog), the loop keeps reading while the thread runs
    # the batch; the last batch, with nobody behind it, runs on the loop again.
    fast.clear()
    assert await asyncio.gather(*(batcher.submit(Item(1, v)) for v in range(4))) == [0, 1, 2, 3]
    await batcher.stop()
    assert loop_thread not in fast[:3] and fast[3] == loop_thread

    slow: list[int] = []
    batcher = Batcher(_threads_of(0.1, slow), on_loop_below_s=0.05, max_rows=1, max_wait=0.0)
    batcher.start()
    for v in range(3):
        await batcher.submit(Item(1, v))
    await batcher.stop()
    # The first batch has no measured time yet; once one took over the bound, the thread.
    assert slow[0] == loop_thread and loop_thread not in slow[1:]
    assert batcher.batch_s > 0.05 and not batcher.runs_on_loop

    never: list[int] = []
    batcher = Batcher(_threads_of(0.0, never), max_rows=1, max_wait=0.0)  # the GPU setting
    batcher.start()
    await asyncio.gather(*(batcher.submit(Item(1, v)) for v in range(3)))
    await batcher.stop()
    assert loop_thread not in never and not batcher.runs_on_loop
