"""Everything one running app holds: settings, keys, model, tiers, batcher (or, for a generation
model, the generation scheduler), metrics.

Loading (model, warm-up, tier calibration) runs in the background after start-up, so `/healthz`
answers at once and `/readyz` turns 200 only when the model can serve.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..batching import Batcher
from ..calibration import CalibrationCache, calibration_set, tier_sigmas
from ..config import ServiceConfig
from ..engine import Engine
from ..errors import Unavailable
from ..generation import GenerationScheduler
from ..keys import KeyStore
from ..metrics import Metrics
from ..modulation import FreshNoise, KeyedNoise, NoiseSource
from ..settings import Settings
from ..tiers import TierTable, build_tiers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """What the routes need of the loaded model."""

    name: str
    task: str
    adapter: Any


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(requested)


def model_name(model: str | dict[str, Any]) -> str:
    if isinstance(model, str):
        return model.rsplit("/", 1)[-1].split(".")[0] if "/" in model else model
    name = model.get("name") or str(model.get("path", "model")).rsplit("/", 1)[-1].split(".")[0]
    return str(name)


class AppState:
    """The app's state; `start` and `stop` are called by the lifespan."""

    def __init__(
        self,
        settings: Settings,
        config: ServiceConfig,
        keys: KeyStore,
        secret: bytes | None = None,
        model: Any = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.keys = keys
        self.metrics = Metrics()
        secret = secret or settings.secret_bytes()
        if secret is None:
            if not settings.demo:
                raise ValueError("no server secret: set AIM_SECRET_FILE or AIM_SECRET (or --demo)")
            secret = secrets.token_bytes(32)
        self.keyed = KeyedNoise(secret)
        self.source: NoiseSource = self.keyed if settings.noise == "keyed" else FreshNoise()
        self.name = model_name(config.model)
        self._preloaded = model
        self.model: LoadedModel | None = None
        self.tiers: TierTable | None = None
        self.batcher: Batcher[Any] | None = None
        self.engine: Engine | None = None
        self.generator: GenerationScheduler | None = None
        self.load_error: str | None = None
        self._loader: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    # Life cycle -------------------------------------------------------------------------------

    async def start(self, wait: bool = False) -> None:
        self._loader = asyncio.get_running_loop().create_task(self._load(), name="aim-load")
        if wait:
            await self._loader

    async def _load(self) -> None:
        started = time.perf_counter()
        try:
            adapter, tiers = await asyncio.to_thread(self._load_blocking)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load")
            return
        self.tiers = tiers
        for tier in tiers:
            self.metrics.set_sigma(tier.name, tier.sigma)
        self.model = LoadedModel(self.name, adapter.task, adapter)
        if adapter.task == "generation":
            self.generator = GenerationScheduler(
                adapter,
                self.source,
                self.metrics,
                max_rows=self.settings.max_batch_size,
                max_wait=self.settings.max_wait_ms / 1000.0,
                queue_size=self.settings.queue_size,
                on_depth=self.metrics.set_queue_depth,
            )
            self.generator.start()
        else:
            self.engine = Engine(adapter, self.source, self.metrics)
            self.batcher = Batcher(
                self.engine.run,
                max_rows=self.settings.max_batch_size,
                max_wait=self.settings.max_wait_ms / 1000.0,
                queue_size=self.settings.queue_size,
                on_depth=self.metrics.set_queue_depth,
            )
            self.batcher.start()
        # Everything loaded so far lives as long as the process: move it out of the collector's
        # sight, so full collections under load scan only per-request garbage (shorter pauses).
        gc.collect()
        gc.freeze()
        self.ready.set()
        log.info(
            "ready",
            extra={
                "model": self.name,
                "task": adapter.task,
                "device": str(adapter.device),
                "tiers": {t.name: round(t.sigma, 4) for t in tiers},
                "load_s": round(time.perf_counter() - started, 2),
            },
        )

    def _load_blocking(self) -> tuple[Any, TierTable]:
        from ..models import load_model
        from ..models.registry import ModelSpec

        device = resolve_device(self.settings.device)
        if device.type == "cpu":
            threads = self.settings.torch_threads or max(1, (os.cpu_count() or 2) // 2)
            torch.set_num_threads(threads)
        spec: Any = self.config.model
        if isinstance(spec, dict):
            spec = ModelSpec.from_dict(spec, self.config.base_dir)
        adapter: Any = self._preloaded or load_model(spec, device)
        adapter.warmup()
        calibration = calibration_set(adapter, self.config.model, self.config.tiers)
        cache = CalibrationCache(self.settings.cache_dir / "calibration.json")
        sigmas = tier_sigmas(self.config.tiers, calibration, cache)
        return adapter, build_tiers(self.config.tiers, sigmas)

    async def stop(self) -> None:
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
        if self.batcher is not None:
            await self.batcher.stop()
        if self.generator is not None:
            await self.generator.stop()

    # Access -----------------------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        """Loaded, and the worker that serves requests (batcher or generation scheduler) runs."""
        if self.model is None:
            return False
        worker = self.batcher if self.batcher is not None else self.generator
        return worker is not None and worker.alive

    def require_ready(self) -> tuple[LoadedModel, TierTable]:
        if self.model is None or self.tiers is None:
            if self.load_error:
                # Permanent until an operator acts: no Retry-After, so clients do not spin on it.
                raise Unavailable("not ready: the model failed to load")
            raise Unavailable("not ready: the model is loading", headers={"Retry-After": "1"})
        return self.model, self.tiers
