"""The replay memory in a real `redis-server`: one memory for every replica, and what an outage
does (the replica's own memory serves, the error is counted)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from service.modulation import ReplayMemory
from service.serving.replay_redis import RedisReplayMemory

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not answer"
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def _memory(url: str, namespace: str = "ns-test", errors: list[int] | None = None) -> Any:
    fallback = ReplayMemory(threshold=0.8)
    on_error = None if errors is None else (lambda: errors.append(1))
    return RedisReplayMemory(url, namespace, fallback, on_error=on_error)


def _rows(n: int, d: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.nn.functional.normalize(
        torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1
    )


def test_a_near_copy_on_another_replica_takes_the_first_writers_cell(redis_url: str) -> None:
    a, b = _memory(redis_url, "ns-1"), _memory(redis_url, "ns-1")
    x = _rows(6)
    own = torch.arange(100, 106)
    served_a = a.assign(["bronze"] * 6, x, torch.zeros(6), own)
    assert served_a.tolist() == own.tolist()  # first seen: their own cells
    near = torch.nn.functional.normalize(x + 0.15 * _rows(6, seed=1), dim=1)
    assert bool(((near * x).sum(1) > 0.9).all())
    served_b = b.assign(["bronze"] * 6, near, torch.zeros(6), torch.arange(200, 206))
    assert served_b.tolist() == own.tolist()
    # Another tier, another class or another secret's namespace never shares them.
    assert b.assign(["silver"] * 6, near, torch.zeros(6), torch.arange(300, 306)).tolist() == list(
        range(300, 306)
    )
    assert b.assign(["bronze"] * 6, near, torch.ones(6), torch.arange(400, 406)).tolist() == list(
        range(400, 406)
    )
    other = _memory(redis_url, "ns-2")
    assert other.assign(
        ["bronze"] * 6, near, torch.zeros(6), torch.arange(500, 506)
    ).tolist() == list(range(500, 506))


def test_distinct_rows_keep_their_own_cells_and_a_batch_sees_its_earlier_rows(
    redis_url: str,
) -> None:
    m = _memory(redis_url, "ns-3")
    x = _rows(20, seed=3)  # random 64-d unit vectors: pairwise cosines near 0
    own = torch.arange(1000, 1020)
    assert m.assign(["bronze"] * 20, x, torch.zeros(20), own).tolist() == own.tolist()
    twin = torch.cat((x[:1], torch.nn.functional.normalize(x[:1] + 0.05 * _rows(1, seed=9), dim=1)))
    served = _memory(redis_url, "ns-4").assign(
        ["bronze"] * 2, twin, torch.zeros(2), torch.tensor([7, 8])
    )
    assert served.tolist() == [7, 7]


def test_an_outage_serves_from_the_replicas_own_memory_and_counts_it() -> None:
    errors: list[int] = []
    port = _free_port()  # nothing listens there
    m = _memory(f"redis://127.0.0.1:{port}/0", "ns-5", errors)
    x = _rows(3, seed=5)
    first = m.assign(["bronze"] * 3, x, torch.zeros(3), torch.tensor([1, 2, 3]))
    assert first.tolist() == [1, 2, 3]
    assert errors == [1] and m.errors == 1
    # The local memory took the rows: a near copy still gets the first cell during the outage.
    near = torch.nn.functional.normalize(x + 0.05 * _rows(3, seed=6), dim=1)
    assert m.assign(["bronze"] * 3, near, torch.zeros(3), torch.tensor([4, 5, 6])).tolist() == [
        1,
        2,
        3,
    ]
    assert errors == [1]  # not asked again while it rests


def test_answers_in_redis_are_the_first_writers_for_every_replica(redis_url: str) -> None:
    from service.serving.replay_redis import Answers

    a, b = _memory(redis_url, "ns-6"), _memory(redis_url, "ns-6")
    x = _rows(3, seed=7)
    first = torch.tensor([[1.5, -2.0, 0.25], [0.0, 1.0, 2.0], [3.0, 3.0, 3.0]])
    # The third row asks with a focus: its entry is stored, its answer is not.
    cells, held = a.assign_and_answer(
        ["bronze"] * 3,
        x,
        torch.zeros(3),
        torch.tensor([42, 43, 44]),
        Answers([True, True, False], [2.0] * 3, first),
    )
    assert cells.tolist() == [42, 43, 44] and held == [None, None, None]
    near = torch.nn.functional.normalize(x + 0.05 * _rows(3, seed=8), dim=1)
    other = torch.tensor([[0.0, 3.0, 1.0], [4.0, 4.0, 4.0], [5.0, 5.0, 5.0]])
    cells, held = b.assign_and_answer(
        ["bronze"] * 3,
        near,
        torch.zeros(3),
        torch.tensor([52, 53, 54]),
        Answers([True, False, True], [2.0, 2.0, 2.0], other),
    )
    assert cells.tolist() == [42, 43, 44]
    assert held[1] is None  # it did not ask for an answer
    assert held[0] is not None
    assert torch.frombuffer(bytearray(held[0]), dtype=torch.float32).tolist() == first[0].tolist()
    # Matched, but the cell holds no answer: the caller modulates; nothing is stored for it.
    assert held[2] is None
    again = b.assign_and_answer(
        ["bronze"], near[2:], torch.zeros(1), torch.tensor([54]), Answers([True], [2.0], other[2:])
    )
    assert again[0].tolist() == [44] and again[1] == [None]
    # Another σ is another answer.
    _, held = b.assign_and_answer(
        ["bronze"], near[:1], torch.zeros(1), torch.tensor([52]), Answers([True], [3.0], other[:1])
    )
    assert held == [None]


def _counting_client(url: str) -> Any:
    import redis

    class Counting(redis.Redis):  # type: ignore[type-arg]
        """The real client, counting the commands it sends (one command, one round trip)."""

        sent: ClassVar[list[str]] = []

        def execute_command(self, *args: Any, **options: Any) -> Any:
            self.sent.append(str(args[0]))
            return super().execute_command(*args, **options)

    return Counting.from_url(url)


def test_the_engine_asks_redis_once_per_batch(redis_url: str) -> None:
    """Cells and remembered answers in one round trip per batch (they were two scripts)."""
    from torch import nn

    from service.models.base import VisionModel
    from service.models.spec import InputSpec
    from service.modulation import KeyedNoise
    from service.observability.metrics import Metrics
    from service.serving.engine import Engine, PredictItem

    client = _counting_client(redis_url)
    memory = RedisReplayMemory(redis_url, "ns-7", ReplayMemory(threshold=0.99), client=client)
    model = VisionModel(
        nn.Sequential(nn.Flatten(), nn.Linear(32, 5)).eval(),
        name="counting",
        task="classification",
        labels=[f"c{i}" for i in range(5)],
        input_spec=InputSpec(shape=(2, 4, 4)),
    )
    engine = Engine(model, KeyedNoise(b"s" * 32), Metrics(), memory)
    rng = np.random.default_rng(0)
    inputs = rng.random((8, 2, 4, 4), dtype=np.float32)

    def batch(x: np.ndarray) -> list[PredictItem]:
        return [PredictItem(x[i : i + 2], "bronze", 3.0, seed=0, top_k=5) for i in range(0, 8, 2)]

    first = engine.run(batch(inputs))  # loads the script (EVALSHA, SCRIPT LOAD, EVALSHA)
    near = inputs + 1e-4 * rng.standard_normal(inputs.shape).astype(np.float32)
    fresh = rng.random((8, 2, 4, 4), dtype=np.float32)
    for x in (near, fresh):
        client.sent.clear()
        results = engine.run(batch(x))
        assert client.sent == ["EVALSHA"], client.sent
        if x is near:  # near copies: the answers first served, from that one call
            assert results == first
    assert memory.errors == 0
