"""The app's state: settings, keys, metrics, and the runtime (model, tiers, worker) bound to
FastAPI's life cycle.

Loading (model, warm-up, tier calibration; see ``service/runtime.py``) runs in the background
after start-up, so `/healthz` answers at once and `/readyz` turns 200 only when the model can
serve. A load or a worker start that fails is logged in one line (`load_error`), makes
`/healthz` fail (a liveness probe then restarts the pod) and calls `on_load_failure`, with which
`aim serve` stops with a non-zero exit.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from ..access.accounting import Accounting
from ..access.keys import KeyStore
from ..access.tiers import TierTable
from ..config import ServiceConfig
from ..errors import Unavailable
from ..generation import GenerationScheduler
from ..observability.metrics import Metrics
from ..runtime import Runtime, load_runtime, model_name, noise_sources
from ..serving.batching import Batcher
from ..settings import Settings

log = logging.getLogger(__name__)


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
        self.accounting = Accounting(settings, config.tiers, self.metrics.registry)
        self.keyed, self.source = noise_sources(settings, secret)
        self.name = model_name(config.model)
        self._preloaded = model
        self.runtime: Runtime | None = None
        self.load_error: str | None = None
        self.on_load_failure: Callable[[str], None] | None = None
        """Called once with `load_error` when loading or the worker's start fails."""
        self._loader: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.in_server: Callable[[], int] | None = None
        """Counts the inference requests inside the server (set by the edge guard)."""

    # Life cycle -------------------------------------------------------------------------------

    async def start(self, wait: bool = False) -> None:
        self._loader = asyncio.get_running_loop().create_task(self._load(), name="aim-load")
        if wait:
            await self._loader

    async def _load(self) -> None:
        started = time.perf_counter()
        try:
            runtime = await asyncio.to_thread(
                load_runtime, self.settings, self.config, self.source, self._preloaded
            )
        except Exception as exc:
            self._failed("model failed to load", exc)
            return
        try:
            runtime.start(self.settings, self.metrics, self.in_server)
        except Exception as exc:  # e.g. the workers' shared memory file cannot be opened
            self._failed("model runtime failed to start", exc)
            return
        self.runtime = runtime
        # Everything loaded so far lives as long as the process: move it out of the collector's
        # sight, so full collections under load scan only per-request garbage (shorter pauses).
        gc.collect()
        gc.freeze()
        self.ready.set()
        log.info(
            "ready",
            extra={
                "model": self.name,
                "task": runtime.task,
                "device": str(runtime.adapter.device),
                "tiers": {t.name: round(t.sigma, 4) for t in runtime.tiers},
                "load_s": round(time.perf_counter() - started, 2),
            },
        )

    def _failed(self, what: str, exc: Exception) -> None:
        # One line an operator can act on (the loaders name the file and the problem); the
        # traceback only at DEBUG.
        self.load_error = f"{what}: {type(exc).__name__}: {exc}"
        log.error(what, extra={"error": f"{type(exc).__name__}: {exc}"})
        log.debug("load failure", exc_info=exc)
        if self.on_load_failure is not None:
            try:
                self.on_load_failure(self.load_error)
            except Exception:
                log.exception("on_load_failure hook failed")

    @property
    def alive(self) -> bool:
        """Liveness: not failed to load, and a started worker still runs (a runtime that is
        still loading is alive)."""
        if self.load_error is not None:
            return False
        return self.runtime is None or self.runtime.alive

    async def stop(self) -> None:
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
        if self.runtime is not None:
            await self.runtime.stop()

    # Access -----------------------------------------------------------------------------------

    @property
    def model(self) -> Runtime | None:
        """The loaded runtime (its `name`, `task`, `adapter`), or None while loading."""
        return self.runtime

    @property
    def tiers(self) -> TierTable | None:
        return self.runtime.tiers if self.runtime is not None else None

    @property
    def batcher(self) -> Batcher[Any] | None:
        return self.runtime.batcher if self.runtime is not None else None

    @property
    def generator(self) -> GenerationScheduler | None:
        return self.runtime.generator if self.runtime is not None else None

    @property
    def serving(self) -> bool:
        """Loaded, and the worker that serves requests (batcher or generation scheduler) runs."""
        return self.runtime is not None and self.runtime.alive

    def require_ready(self) -> tuple[Runtime, TierTable]:
        if self.runtime is None:
            if self.load_error:
                # Permanent until an operator acts: no Retry-After, so clients do not spin on it.
                raise Unavailable("not ready: the model failed to load")
            raise Unavailable("not ready: the model is loading", headers={"Retry-After": "1"})
        return self.runtime, self.runtime.tiers
