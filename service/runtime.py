"""The runtime: the model, its tiers, the noise source and the worker that serves requests,
built from the settings and the config file, with no web imports.

``api/state.py`` binds a runtime to FastAPI (lifespan, readiness); a script or a test can build
one directly. Building takes two steps because they run in different places: :func:`load_runtime`
blocks (model loading, warm-up, tier calibration) and runs on a thread, then :meth:`Runtime.start`
starts the worker on the running event loop.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .access.tiers import TierTable, build_tiers
from .calibration.cache import CalibrationCache
from .calibration.data import calibration_set
from .calibration.sigmas import tier_sigmas
from .config import ServiceConfig
from .generation import GenerationScheduler
from .modulation import (
    DigestEncoder,
    FreshNoise,
    KeyedNoise,
    NoiseSource,
    ReplayMemory,
    SharedRings,
)
from .observability.metrics import Metrics
from .serving.batching import Batcher
from .serving.cpu_threads import choose_threads, half_the_cores
from .serving.engine import Engine
from .serving.workers import WorkerContext
from .settings import Settings


def noise_sources(
    settings: Settings, secret: bytes | None = None
) -> tuple[KeyedNoise, NoiseSource]:
    """The keyed noise (it also derives the per-key seeds) and the source that serves requests:
    the keyed one, or fresh noise for research use. ``--demo`` without a secret makes one up."""
    secret = secret or settings.secret_bytes()
    if secret is None:
        if not settings.demo:
            raise ValueError("no server secret: set AIM_SECRET_FILE or AIM_SECRET (or --demo)")
        secret = secrets.token_bytes(32)
    keyed = KeyedNoise(secret)
    return keyed, keyed if settings.noise == "keyed" else FreshNoise()


def model_name(model: str | dict[str, Any]) -> str:
    """The name the model is served under: a shipped name, a file's stem, or the spec's name."""
    if isinstance(model, str):
        return model.rsplit("/", 1)[-1].split(".")[0] if "/" in model else model
    name = model.get("name") or str(model.get("path", "model")).rsplit("/", 1)[-1].split(".")[0]
    return str(name)


def replay_memory(settings: Settings, source: NoiseSource, metrics: Metrics) -> Any:
    """The replay memory: in Redis with ``AIM_REDIS_URL`` (one for every worker and replica; the
    worker's own memory serves while Redis fails), else the workers' shared file or None (the
    engine keeps its own)."""
    local = worker_memory()
    if settings.redis_url is None or not isinstance(source, KeyedNoise):
        return local
    from .serving.replay_redis import RedisReplayMemory

    return RedisReplayMemory(
        settings.redis_url.get_secret_value(),
        source.namespace(),
        local if local is not None else ReplayMemory(),
        on_error=metrics.observe_replay_error,
    )


def worker_memory() -> ReplayMemory | None:
    """A worker's replay memory on the file its parent made (`aim serve --workers N`), so all
    workers remember queries as one; None outside workers (the engine keeps its own)."""
    worker = WorkerContext.from_env()
    if worker is None or worker.memory is None:
        return None
    # The file's tier list (the parent's config) maps tiers to slots alike in every worker.
    return ReplayMemory(shared=SharedRings.open(worker.memory))


@dataclass
class Runtime:
    """A loaded model at its calibrated tiers, and (once started) the worker that serves it: the
    generation scheduler for a generation model, else the vision batcher over an :class:`Engine`."""

    name: str
    adapter: Any
    tiers: TierTable
    source: NoiseSource
    digest: DigestEncoder | None = None
    digest_info: dict[str, str] | None = None
    """What ``GET /model`` says about the replay digest (None: no replay memory)."""
    engine: Engine | None = None
    batcher: Batcher[Any] | None = None
    generator: GenerationScheduler | None = None

    @property
    def task(self) -> str:
        return str(self.adapter.task)

    def start(
        self, settings: Settings, metrics: Metrics, in_server: Callable[[], int] | None = None
    ) -> None:
        """Start the worker on the running event loop; ``in_server`` counts the inference
        requests inside the server (the edge guard's), for the batcher's patience."""
        for tier in self.tiers:
            metrics.set_sigma(tier.name, tier.sigma)
        queue: dict[str, Any] = {
            "max_rows": settings.max_batch_size,
            "max_wait": settings.max_wait_ms / 1000.0,
            "queue_size": settings.queue_size,
            "on_depth": metrics.set_queue_depth,
            "on_shed": metrics.observe_shed,
        }
        if self.task == "generation":
            self.generator = GenerationScheduler(self.adapter, self.source, metrics, **queue)
            self.generator.start()
        else:
            memory = replay_memory(settings, self.source, metrics)
            self.engine = Engine(self.adapter, self.source, metrics, memory, self.digest)
            on_cpu = getattr(self.adapter, "device", torch.device("cpu")).type == "cpu"
            bound = settings.forward_on_loop_ms / 1000.0
            self.batcher = Batcher(
                self.engine.run,
                on_loop_below_s=bound if on_cpu and bound > 0 else None,
                in_server=in_server,
                **queue,
            )
            self.batcher.start()

    @property
    def worker(self) -> Batcher[Any] | GenerationScheduler | None:
        """The one that serves requests, once started: the batcher or the generation scheduler."""
        return self.batcher if self.batcher is not None else self.generator

    def check_capacity(self, rank: int = 0, tier: str = "") -> None:
        """``Unavailable`` (503) at once when the queue is full with nobody of a lower tier than
        ``rank`` to displace, so a request is refused before its body is read."""
        if self.worker is not None:
            self.worker.check_capacity(rank, tier)

    @property
    def alive(self) -> bool:
        """The worker that serves requests runs."""
        return self.worker is not None and self.worker.alive

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        if self.generator is not None:
            await self.generator.stop()


def load_runtime(
    settings: Settings, config: ServiceConfig, source: NoiseSource, model: Any = None
) -> Runtime:
    """Load (or take the preloaded ``model``), warm up and calibrate the tiers; blocking."""
    from .models import ModelSpec, load_model, resolve_device
    from .models.digests import model_digest

    device = resolve_device(settings.device)
    if device.type == "cpu":
        torch.set_num_threads(settings.torch_threads or half_the_cores())
    spec: Any = config.model
    if isinstance(spec, dict):
        spec = ModelSpec.from_dict(spec, config.base_dir)
    adapter: Any = model or load_model(spec, device)
    adapter.warmup()
    if device.type == "cpu" and settings.torch_threads is None:
        # A compute-bound model gets every core (serving/cpu_threads.py).
        choose_threads(adapter, settings.forward_on_loop_ms or 10.0)
    digest, digest_info = model_digest(spec, adapter, device)
    images = spec.calibration if isinstance(spec, ModelSpec) else None
    calibration = calibration_set(adapter, config.model, config.tiers, images)
    cache = CalibrationCache(settings.cache_dir / "calibration.json")
    # Keyed noise is a fixed function: σ is calibrated on the agreement it actually serves (for
    # classifiers, through the replay memory keyed on ``digest``).
    served = source if isinstance(source, KeyedNoise) else None
    sigmas = tier_sigmas(config.tiers, calibration, cache, served, digest)
    tiers = build_tiers(config.tiers, sigmas)
    return Runtime(model_name(config.model), adapter, tiers, source, digest, digest_info)
