"""service/runtime.py: the runtime builds and serves without the web layer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from service.config import ServiceConfig
from service.models import resolve_device
from service.runtime import load_runtime, model_name, noise_sources
from service.serving.engine import PredictItem
from service.settings import Settings

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]


def test_the_runtime_imports_no_web_code() -> None:
    # -X importtime lists every module the import loads, one per stderr line, name last.
    trace = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import service.runtime"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    loaded = {line.rsplit("|", 1)[-1].strip() for line in trace.splitlines() if "|" in line}
    assert "service.runtime" in loaded
    web = {m for m in loaded if m.split(".")[0] in {"fastapi", "starlette", "uvicorn"}}
    assert sorted(web | {m for m in loaded if m.startswith("service.api")}) == []


async def test_a_runtime_built_directly_serves_a_batch(cache_dir: Path) -> None:
    from service.observability.metrics import Metrics

    settings = Settings(cache_dir=cache_dir, device="cpu", demo=True, max_wait_ms=0.0)
    keyed, source = noise_sources(settings)
    runtime = load_runtime(settings, ServiceConfig(), source)
    assert runtime.name == "digits" and runtime.task == "classification"
    assert [t.name for t in runtime.tiers] == ["gold", "silver", "bronze"]
    assert not runtime.alive
    runtime.start(settings, Metrics())
    try:
        assert runtime.alive and runtime.batcher is not None
        tier = runtime.tiers.get("gold")
        inputs = torch.zeros(2, 1, 8, 8)
        item = PredictItem(inputs, tier.name, tier.sigma, keyed.tier_seed(tier.name))
        predictions = await runtime.batcher.submit(item)
        assert len(predictions) == 2 and predictions[0]["label"] in runtime.adapter.labels
    finally:
        await runtime.stop()
    assert not runtime.alive


def test_noise_needs_a_secret_unless_demo() -> None:
    with pytest.raises(ValueError, match="no server secret"):
        noise_sources(Settings(demo=False))
    keyed, source = noise_sources(Settings(noise="fresh"), secret=b"s")
    assert source is not keyed


def test_model_names() -> None:
    assert model_name("digits") == "digits"
    assert model_name("models/resnet50.pt") == "resnet50"
    assert model_name({"path": "models/net.pt2"}) == "net"
    assert model_name({"name": "mine", "path": "x.pt"}) == "mine"


def test_device_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")
