"""The per-tier replay memory: near-duplicates reuse a cell, distinct inputs keep their own."""

from __future__ import annotations

import pytest
import torch

from service.modulation import ModulationArgumentError, ReplayMemory

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _embeddings(n: int, d: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_near_duplicates_reuse_the_first_cell_distinct_inputs_keep_their_own() -> None:
    memory = ReplayMemory(threshold=0.98)
    e = _embeddings(8)
    own = torch.arange(100, 108)
    first = memory.assign(["bronze"] * 8, e, torch.zeros(8, dtype=torch.int64), own)
    assert torch.equal(first, own)  # random 32-d vectors are far apart
    near = e + 0.01 * _embeddings(8, seed=1)
    again = memory.assign(["bronze"] * 8, near, torch.zeros(8, dtype=torch.int64), own + 50)
    assert torch.equal(again, own)


def test_the_memory_is_per_tier_and_per_bucket() -> None:
    memory = ReplayMemory()
    e = _embeddings(1)
    zero = torch.zeros(1, dtype=torch.int64)
    memory.assign(["bronze"], e, zero, torch.tensor([7]))
    assert memory.assign(["silver"], e, zero, torch.tensor([8])).item() == 8
    assert memory.assign(["bronze"], e, zero + 1, torch.tensor([9])).item() == 9
    assert memory.assign(["bronze"], e, zero, torch.tensor([10])).item() == 7


def test_copies_inside_one_batch_share_the_earliest_cell() -> None:
    memory = ReplayMemory(threshold=0.98)
    base = _embeddings(1)
    # A chain: each copy is close to the one before, the last far from the first.
    copies = torch.cat([base + 0.05 * i * _embeddings(1, seed=9) for i in range(6)])
    served = memory.assign(["b"] * 6, copies, torch.zeros(6, dtype=torch.int64), torch.arange(6))
    assert served.tolist() == [0] * 6


def test_order_within_a_batch_equals_one_row_at_a_time() -> None:
    e = torch.cat([_embeddings(4), _embeddings(4) + 0.01 * _embeddings(4, seed=3)])
    buckets = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    cells = torch.arange(8)
    batched = ReplayMemory().assign(["t"] * 8, e, buckets, cells)
    one = ReplayMemory()
    single = torch.cat(
        [one.assign(["t"], e[i : i + 1], buckets[i : i + 1], cells[i : i + 1]) for i in range(8)]
    )
    assert torch.equal(batched, single)
    assert batched.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def test_entries_expire_after_the_window_and_the_oldest_go_first() -> None:
    clock = Clock()
    memory = ReplayMemory(window=10.0, capacity=2, clock=clock)
    e = _embeddings(3)
    zero = torch.zeros(1, dtype=torch.int64)
    memory.assign(["t"], e[:1], zero, torch.tensor([1]))
    clock.now = 11.0
    assert memory.assign(["t"], e[:1], zero, torch.tensor([2])).item() == 2  # expired
    memory.assign(["t"], e[1:2], zero, torch.tensor([3]))
    memory.assign(["t"], e[2:3], zero, torch.tensor([4]))  # capacity 2: the first entry goes
    assert len(memory) == 2
    assert memory.assign(["t"], e[:1], zero, torch.tensor([5])).item() == 5
    assert memory.assign(["t"], e[2:3], zero, torch.tensor([6])).item() == 4


def test_large_embeddings_are_projected_and_still_match() -> None:
    memory = ReplayMemory()
    e = _embeddings(2, d=1000)
    zero = torch.zeros(2, dtype=torch.int64)
    memory.assign(["t", "t"], e, zero, torch.tensor([1, 2]))
    near = e + 0.005 * _embeddings(2, d=1000, seed=4)
    assert memory.assign(["t", "t"], near, zero, torch.tensor([3, 4])).tolist() == [1, 2]


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [({"threshold": 1.0}, "threshold"), ({"capacity": 0}, "capacity"), ({"window": 0}, "window")],
)
def test_bad_settings_name_the_argument(kwargs: dict[str, float], argument: str) -> None:
    with pytest.raises(ModulationArgumentError) as info:
        ReplayMemory(**kwargs)  # type: ignore[arg-type]
    assert info.value.argument == argument
