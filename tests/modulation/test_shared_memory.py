"""The replay memory's rings in a shared file: every memory on the file serves as one memory.

Memories opened on one file (in this process, and in a spawned one) must behave as a single
in-process memory would: what one stored, the others match, with capacity and window holding
across them; fed the reference test's batches, a shared memory must serve exactly the cells an
unshared one serves.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from test_memory_reference import Clock, Sent, _batch

from service.modulation import ModulationArgumentError, ReplayMemory, SharedRings

pytestmark = pytest.mark.unit

TIERS = ["bronze", "silver", "gold"]


def _embeddings(n: int, d: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _zeros(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.int64)


def _store(
    tmp_path: Path, tiers: list[str] = TIERS, buckets: int = 4, capacity: int = 64, dim: int = 128
) -> SharedRings:
    return SharedRings.create(tmp_path / "rings", tiers, buckets, capacity, dim)


def test_the_file_is_sparse_and_its_header_describes_it(tmp_path: Path) -> None:
    SharedRings.create(tmp_path / "rings", TIERS, buckets=64, capacity=4096)
    size = os.stat(tmp_path / "rings").st_size
    assert size > 3 * 64 * 4096 * 128 * 4  # room for every entry of every (tier, bucket)
    assert os.stat(tmp_path / "rings").st_blocks * 512 < 1 << 20  # but only the header written
    opened = SharedRings.open(tmp_path / "rings")
    assert (opened.tiers, opened.buckets, opened.capacity, opened.dim) == (
        tuple(TIERS),
        64,
        4096,
        128,
    )
    assert not list(tmp_path.glob(".*tmp"))


def test_two_memories_on_one_file_serve_as_one(tmp_path: Path) -> None:
    path = _store(tmp_path).path
    a = ReplayMemory(threshold=0.98, capacity=64, buckets=4, shared=SharedRings.open(path))
    b = ReplayMemory(threshold=0.98, capacity=64, buckets=4, shared=SharedRings.open(path))
    e = _embeddings(8)
    buckets = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    own = torch.arange(100, 108)
    assert torch.equal(a.assign(["bronze"] * 8, e, buckets, own), own)
    near = e + 0.01 * _embeddings(8, seed=1)
    assert torch.equal(b.assign(["bronze"] * 8, near, buckets, own + 50), own)  # A's cells
    assert len(a) == len(b) == 8
    # Distinct inputs keep their own cell, and B's new entries are A's too.
    fresh = _embeddings(3, seed=2)
    assert b.assign(["bronze"] * 3, fresh, _zeros(3), torch.tensor([7, 8, 9])).tolist() == [7, 8, 9]
    again = fresh + 0.01 * _embeddings(3, seed=3)
    assert a.assign(["bronze"] * 3, again, _zeros(3), torch.tensor([1, 2, 3])).tolist() == [7, 8, 9]
    # Per tier and per bucket, as in one process.
    assert a.assign(["silver"], e[:1], _zeros(1), torch.tensor([5])).item() == 5
    assert b.assign(["bronze"], e[:1], _zeros(1) + 1, torch.tensor([6])).item() == 6
    assert (a.stats.rows, b.stats.rows) == (12, 12)  # counters stay per process


def test_capacity_and_window_hold_across_memories(tmp_path: Path) -> None:
    clock = Clock()
    path = _store(tmp_path, capacity=2).path
    settings: dict[str, Any] = {"window": 10.0, "capacity": 2, "buckets": 4, "clock": clock}
    a = ReplayMemory(**settings, shared=SharedRings.open(path))
    b = ReplayMemory(**settings, shared=SharedRings.open(path))
    e = _embeddings(3)
    zero = _zeros(1)
    a.assign(["gold"], e[:1], zero, torch.tensor([1]))
    clock.now += 11.0
    assert b.assign(["gold"], e[:1], zero, torch.tensor([2])).item() == 2  # expired
    a.assign(["gold"], e[1:2], zero, torch.tensor([3]))
    b.assign(["gold"], e[2:3], zero, torch.tensor([4]))  # capacity 2: B's entry from above goes
    assert len(a) == len(b) == 2
    assert a.assign(["gold"], e[2:3], zero, torch.tensor([5])).item() == 4  # B's, via A
    assert b.assign(["gold"], e[1:2], zero, torch.tensor([6])).item() == 3  # A's, via B
    assert b.assign(["gold"], e[:1], zero, torch.tensor([7])).item() == 7  # evicts A's entry
    assert a.assign(["gold"], e[1:2], zero, torch.tensor([8])).item() == 8
    b.clear()
    assert len(a) == 0
    assert a.assign(["gold"], e[:1], zero, torch.tensor([9])).item() == 9


@pytest.mark.parametrize(
    ("settings", "d", "seed", "memories"),
    [
        ({"capacity": 16, "window": 6.0, "buckets": 4}, 32, 0, 1),
        ({"capacity": 7, "window": 4.0, "buckets": 64, "threshold": 0.95}, 32, 1, 2),
        ({"capacity": 64, "window": 50.0, "buckets": 4, "chain": False}, 128, 2, 2),
        ({"capacity": 5, "window": 3.0, "buckets": 2, "dedupe": 0.99}, 200, 3, 3),
    ],
)
def test_shared_memories_serve_what_one_unshared_memory_serves(
    tmp_path: Path, settings: dict[str, Any], d: int, seed: int, memories: int
) -> None:
    """The reference test's batches (tiers, buckets, near and exact copies, wrapped rings, a
    clock that goes back), given in turn to ``memories`` memories on one file."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    clock = Clock()
    path = _store(tmp_path, buckets=settings["buckets"], capacity=settings["capacity"]).path
    one = ReplayMemory(clock=clock, **settings)
    shared = [
        ReplayMemory(clock=clock, **settings, shared=SharedRings.open(path))
        for _ in range(memories)
    ]
    centre = 0.1 * torch.randn(d, generator=gen)
    for memory in [one, *shared]:
        memory.centre = centre
    pool = torch.randn(24, d, generator=gen)
    sent: Sent = []
    for step in range(120):
        tiers, e, buckets, cells = _batch(rng, gen, pool, sent, d)
        want = one.assign(tiers, e, buckets, cells)
        got = shared[step % memories].assign(tiers, e, buckets, cells)
        assert got.dtype == want.dtype
        assert torch.equal(got, want), f"batch {step}"
        clock.now += rng.choice([0.0, 0.0, 0.5, 1.0, 2.0, 5.0, 8.0, -1.5, -6.0])
    assert one.stats.matched > 50 and one.stats.stored > 50
    for name in ("rows", "matched", "stored"):
        assert sum(getattr(m.stats, name) for m in shared) == getattr(one.stats, name), name
    assert len(shared[0]) == len(one)
    store = SharedRings.open(path)
    dim = min(d, 128)
    for (tier, bucket), ring in one._rings.items():
        slot = store.slot(tier, bucket)
        assert slot is not None
        assert store.ints[4 * slot : 4 * slot + 2].tolist() == [ring.size, ring.head]
        assert torch.equal(store.emb[slot, :, :dim], ring.emb), (tier, bucket)
        assert not store.emb[slot, :, dim:].any()  # zero-padded
        assert torch.equal(store.cell[slot], ring.cell)
        assert torch.equal(store.stamp[slot, : ring.size], ring.stamp[: ring.size])


def _child(path: str, go: Any, results: Any) -> None:
    """In a spawned process: match the parent's rows, store new ones, then store 1,500 distinct
    rows one by one while the parent does the same."""
    memory = ReplayMemory(threshold=0.98, buckets=4, shared=SharedRings.open(path))
    near = _embeddings(4) + 0.01 * _embeddings(4, seed=1)
    matched = memory.assign(["bronze"] * 4, near, torch.arange(4), torch.arange(50, 54))
    fresh = memory.assign(["silver"] * 2, _embeddings(2, seed=2), _zeros(2), torch.tensor([7, 8]))
    results.put((matched.tolist(), fresh.tolist()))
    go.wait()
    for i, row in enumerate(_embeddings(1500, seed=10)):
        memory.assign(["gold"], row[None], _zeros(1), torch.tensor([10_000 + i]))
    results.put("done")


def _receive(results: Any, child: Any) -> Any:
    """The child's next message; fails as soon as the child is found dead instead."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            return results.get(timeout=0.5)
        except queue.Empty:
            assert child.is_alive(), f"the child exited with {child.exitcode}"
    raise AssertionError("no answer from the child in 120 s")


def test_a_spawned_process_serves_from_the_same_memory(tmp_path: Path) -> None:
    store = SharedRings.create(tmp_path / "rings", TIERS, buckets=4, capacity=4096)
    memory = ReplayMemory(threshold=0.98, buckets=4, shared=store)
    memory.assign(["bronze"] * 4, _embeddings(4), torch.arange(4), torch.arange(100, 104))
    ctx = multiprocessing.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_child, args=(str(store.path), go, results))
    child.start()
    try:
        matched, fresh = _receive(results, child)
        assert matched == [100, 101, 102, 103]  # the parent's cells
        assert fresh == [7, 8]
        again = _embeddings(2, seed=2) + 0.01 * _embeddings(2, seed=3)
        assert memory.assign(["silver"] * 2, again, _zeros(2), torch.tensor([1, 2])).tolist() == [
            7,
            8,
        ]
        # Both store at once into one ring: under the lock no entry is lost or overwritten.
        go.set()
        for i, row in enumerate(_embeddings(1500, seed=11)):
            memory.assign(["gold"], row[None], _zeros(1), torch.tensor([20_000 + i]))
        assert _receive(results, child) == "done"
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    assert len(memory) == 4 + 2 + 3000
    rows = torch.cat([_embeddings(1500, seed=10), _embeddings(1500, seed=11)])
    want = torch.cat([torch.arange(10_000, 11_500), torch.arange(20_000, 21_500)])
    served = memory.assign(
        ["gold"] * 3000, rows, _zeros(3000), torch.zeros(3000, dtype=torch.int64)
    )
    assert torch.equal(served, want)


def test_rows_of_a_tier_the_file_lacks_keep_their_own_cell(tmp_path: Path) -> None:
    memory = ReplayMemory(capacity=64, buckets=4, shared=_store(tmp_path, tiers=["bronze"]))
    e = _embeddings(1).repeat(3, 1)  # three exact copies
    served = memory.assign(["bronze", "trial", "trial"], e, _zeros(3), torch.tensor([1, 2, 3]))
    assert served.tolist() == [1, 2, 3]  # not the bronze row's, nor the first trial row's
    assert len(memory) == 1
    assert memory.assign(["trial"], e[:1], _zeros(1), torch.tensor([4])).item() == 4
    assert memory.assign(["bronze"], e[:1], _zeros(1), torch.tensor([5])).item() == 1
    assert memory.stats.rows == 2  # only rows the memory held are counted


@pytest.mark.parametrize(
    ("create", "memory", "argument"),
    [
        ({"capacity": 64}, {"capacity": 128}, "capacity"),
        ({"buckets": 4}, {"buckets": 64}, "buckets"),
        ({"dim": 64}, {}, "dim"),
    ],
)
def test_memory_settings_that_differ_from_the_file_are_named(
    tmp_path: Path, create: dict[str, Any], memory: dict[str, Any], argument: str
) -> None:
    store = _store(tmp_path, **create)
    settings = {"capacity": 64, "buckets": 4} | memory
    with pytest.raises(ValueError, match=argument) as info:
        ReplayMemory(**settings, shared=SharedRings.open(store.path))
    assert isinstance(info.value, ModulationArgumentError) and info.value.argument == argument


@pytest.mark.parametrize(
    ("expect", "argument"),
    [
        ({"tiers": ["bronze", "silver"]}, "tiers"),
        ({"tiers": ["silver", "bronze", "gold"]}, "tiers"),
        ({"capacity": 4096}, "capacity"),
        ({"buckets": 64}, "buckets"),
        ({"dim": 32}, "dim"),
    ],
)
def test_opening_checks_the_header(tmp_path: Path, expect: dict[str, Any], argument: str) -> None:
    path = _store(tmp_path).path
    SharedRings.open(path, tiers=TIERS, buckets=4, capacity=64, dim=128)  # what it was made with
    with pytest.raises(ModulationArgumentError, match=argument) as info:
        SharedRings.open(path, **expect)
    assert info.value.argument == argument


def test_a_file_that_is_no_memory_or_is_cut_short_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_bytes(b"not a memory" * 1000)
    with pytest.raises(ValueError, match="not a replay memory"):
        SharedRings.open(other)
    path = _store(tmp_path).path
    os.truncate(path, os.stat(path).st_size - 1)
    with pytest.raises(ValueError, match="shorter"):
        SharedRings.open(path)


def test_an_object_inherited_by_fork_refuses_to_lock(tmp_path: Path) -> None:
    store = _store(tmp_path)
    memory = ReplayMemory(capacity=64, buckets=4, shared=store)
    store.lock._pid = -1  # what a forked child sees: its pid is not the opener's
    with pytest.raises(RuntimeError, match="fork"):
        memory.assign(["bronze"], _embeddings(1), _zeros(1), torch.tensor([1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_rows_are_served_on_their_device(tmp_path: Path) -> None:
    path = _store(tmp_path).path
    a = ReplayMemory(capacity=64, buckets=4, shared=SharedRings.open(path))
    b = ReplayMemory(capacity=64, buckets=4, shared=SharedRings.open(path))
    e = _embeddings(3, d=300)
    a.assign(["bronze", "gold", "bronze"], e, torch.arange(3), torch.tensor([1, 2, 3]))
    near = (e + 0.001 * _embeddings(3, d=300, seed=1)).cuda()
    tiers = ["bronze", "trial", "bronze"]
    served = b.assign(tiers, near, torch.arange(3).cuda(), torch.tensor([4, 5, 6]).cuda())
    assert served.device == near.device
    assert served.tolist() == [1, 5, 3]
