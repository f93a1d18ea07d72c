"""Shared fixtures: keys per tier, and app/client factories for the digits service."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.access.keys import KeyRecord, KeyStore, generate_key, hash_key
from service.api.app import create_app
from service.config import ServiceConfig
from service.settings import Settings

TEST_SECRET = b"test-secret-do-not-use"

DIGITS_CONFIG: dict[str, Any] = {
    "model": "digits",
    "tiers": {
        "gold": {"utility": 1.0},
        "silver": {"utility": 0.85},
        "bronze": {"utility": 0.6, "focus": False, "max_items": 4},
        "trial": {"sigma": 4.0, "rate_limit": "2/m"},
    },
}


@pytest.fixture(scope="session")
def api_keys() -> dict[str, str]:
    """One plaintext key per tier of DIGITS_CONFIG, by tier name."""
    return {tier: generate_key() for tier in DIGITS_CONFIG["tiers"]}


@pytest.fixture(scope="session")
def key_store(api_keys: dict[str, str]) -> KeyStore:
    return KeyStore([KeyRecord(f"test-{t}", t, hash_key(k)) for t, k in api_keys.items()])


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("aim-cache")


def wait_ready(client: TestClient, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get("/readyz")
        if r.status_code == 200:
            return
        if r.json().get("status") == "failed":
            raise RuntimeError("model failed to load")
        time.sleep(0.05)
    raise TimeoutError("service did not become ready")


ClientFactory = Callable[..., Any]


@pytest.fixture(scope="session")
def make_client(key_store: KeyStore, cache_dir: Path) -> ClientFactory:
    """`with make_client(config_dict, **settings) as client:` yields a ready TestClient."""

    @contextmanager
    def factory(
        config: dict[str, Any] | None = None, model: Any = None, **overrides: Any
    ) -> Iterator[TestClient]:
        settings = Settings(cache_dir=cache_dir, device="cpu", **overrides)
        app = create_app(
            settings,
            ServiceConfig.from_dict(config or DIGITS_CONFIG),
            key_store,
            secret=TEST_SECRET,
            model=model,
        )
        with TestClient(app, raise_server_exceptions=False) as client:
            wait_ready(client)
            yield client

    return factory


@pytest.fixture(scope="module")
def client(make_client: ClientFactory) -> Iterator[TestClient]:
    """A ready in-process client of the digits service (DIGITS_CONFIG tiers)."""
    with make_client(max_wait_ms=5.0) as c:
        yield c


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Single-threaded torch for a module: a tiny model only loses time to threads."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny causal LM directory (with calibration.txt and heldout.txt), built once per session
    by `scripts/make_tiny_lm.py` from the shipped corpus: seeded, a few seconds, no network."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_tiny_lm", ROOT / "scripts/make_tiny_lm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path: Path = module.build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"), seed=0, steps=120)
    return path


@pytest.fixture(scope="session")
def heldout_digits() -> tuple[list[Any], list[int]]:
    """Held-out digits as raw 8×8 lists (values 0..16) and their labels."""
    from service.models.data import digits_splits

    x, y = digits_splits().heldout
    return [img.tolist() for img in x], [int(v) for v in y]


def _script(name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / f"scripts/{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def hf_vision_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny Hugging Face vision directories with random weights and their image processors
    (`scripts/make_hf_vision.py`): "vit", "resnet" (ConvNeXt-style crop), "segformer"."""
    build = _script("make_hf_vision").build
    root = tmp_path_factory.mktemp("hf_vision")
    kinds = {"vit": "vit-tiny", "resnet": "resnet-tiny", "segformer": "segformer-tiny"}
    return {name: build(kind, root / name) for name, kind in kinds.items()}


@pytest.fixture(scope="session")
def photo() -> Callable[..., bytes]:
    """``photo(width, height, seed=0, fmt="JPEG")``: a smooth random photo-like image, encoded."""
    return _photo


def _photo(width: int, height: int, seed: int = 0, fmt: str = "JPEG") -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = (rng.random((height // 16 + 2, width // 16 + 2, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()
