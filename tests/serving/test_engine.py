"""The engine runs the network once per batch, whatever the replay memory needs from it."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from service.models.base import VisionModel
from service.models.spec import InputSpec
from service.modulation.memory import ReplayMemory
from service.modulation.noise import FreshNoise, KeyedNoise, NoiseSource
from service.observability.metrics import Metrics
from service.serving.engine import Engine, PredictItem


class CountingNet(nn.Module):
    """A linear classifier over 2×4×4 inputs with no ``forward_with_embedding`` (like a Hugging
    Face or TorchScript model): the memory falls back to its centred logits."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(32, 5)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out: torch.Tensor = self.linear(x.flatten(1))
        return out


def _engine(
    memory: ReplayMemory | None, source: NoiseSource | None = None
) -> tuple[Engine, CountingNet]:
    net = CountingNet().eval()
    model = VisionModel(
        net,
        name="counting",
        task="classification",
        labels=[f"c{i}" for i in range(5)],
        input_spec=InputSpec(shape=(2, 4, 4)),
    )
    return Engine(model, source or KeyedNoise(b"s" * 32), Metrics(), memory), net


def _items(n: int) -> list[PredictItem]:
    rng = np.random.default_rng(0)
    return [
        PredictItem(rng.random((1, 2, 4, 4), dtype=np.float32), "bronze", 1.0, seed=i, top_k=1)
        for i in range(n)
    ]


def test_a_model_without_an_embedding_runs_once_per_batch_with_the_replay_memory() -> None:
    # It ran twice: once through forward_with_embedding (answering no embedding), then again
    # for the centred-logits fallback: half the throughput of every Hugging Face model.
    engine, net = _engine(ReplayMemory(threshold=0.9))
    results = engine.run(_items(3))
    assert net.calls == 1
    assert len(results) == 3 and all(isinstance(r, list) for r in results)


def test_a_model_runs_once_per_batch_without_a_memory() -> None:
    engine, net = _engine(None, FreshNoise())  # fresh noise (research use) keeps no memory
    assert engine.memory is None
    engine.run(_items(4))
    assert net.calls == 1
