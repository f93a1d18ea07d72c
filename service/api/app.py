"""The app factory: wires settings, state, middleware, error handlers and routes. Nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp

from .. import __version__
from ..access.keys import KeyStore
from ..access.keywatch import KeysWatcher
from ..config import ServiceConfig
from ..settings import Settings
from .direct import DirectRoute
from .docs import install_docs
from .errors import install_error_handlers
from .metering import MeteringMiddleware
from .middleware import ServiceMiddleware
from .routes import admin, info, openai, predict, v2
from .state import AppState


class ServiceApp(FastAPI):
    """FastAPI with the service's own middleware outermost, outside FastAPI's.

    Every request passes request ids, metrics and the access log (api/middleware.py), then usage
    metering (api/metering.py), then the direct `POST /predict` (api/direct.py); only what that
    does not take goes on into FastAPI's stack (its server error, telemetry and body-limit
    middleware, exception handlers, routing). Added with `add_middleware`, ours would sit inside
    FastAPI's outer three, and every `/predict` would pay for them and their send wrappers.
    """

    edge: Callable[[ASGIApp], ASGIApp] | None = None
    """Wraps FastAPI's stack; set by `create_app`."""

    def build_middleware_stack(self) -> ASGIApp:
        inner = super().build_middleware_stack()
        return inner if self.edge is None else self.edge(inner)


def _edge(inner: ASGIApp, state: AppState, max_body_bytes: int) -> ASGIApp:
    direct = DirectRoute(inner, state, "POST", "/predict", predict.route(), predict.predict)
    return ServiceMiddleware(
        MeteringMiddleware(direct, state.accounting), state.metrics, max_body_bytes
    )


def create_app(
    settings: Settings,
    config: ServiceConfig | None = None,
    keys: KeyStore | None = None,
    secret: bytes | None = None,
    model: Any = None,
) -> FastAPI:
    """Build the app. Keys come from `keys` or `settings.keys_file`; the model loads at start-up."""
    config = config or (ServiceConfig.load(settings.config) if settings.config else ServiceConfig())
    tier_names = {t.name for t in config.tiers}
    if keys is None:
        if settings.keys_file is None:
            raise ValueError("no keys: give --keys-file (or --demo for ephemeral keys)")
        keys = KeyStore.load(settings.keys_file, tier_names)
    state = AppState(settings, config, keys, secret=secret, model=model)
    # Keys read from a file follow it while the server runs (added and revoked keys, SIGHUP).
    watcher = (
        KeysWatcher(keys, settings.keys_file, tier_names, state.metrics.registry)
        if settings.keys_file is not None
        else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        state.accounting.start()
        if watcher is not None:
            watcher.start()
        try:
            yield
        finally:
            if watcher is not None:
                await watcher.stop()
            await state.stop()
            await state.accounting.stop()

    app = ServiceApp(
        title="AIM serving",
        version=__version__,
        description=(
            "One model at several utility tiers, by logit redistribution (AIM, WWW'25). "
            "Authenticate with `X-API-Key` or `Authorization: Bearer`; `X-AIM-Tier` may lower "
            "the tier."
        ),
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry hook looks up the global providers (environment
        # reads) on every request even when none is configured; the service has Prometheus.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        docs_url=None,  # install_docs serves /docs from local files
        redoc_url=None,
    )
    app.state.aim = state
    install_error_handlers(app, {"/v2": v2.error_shape, "/v1": openai.error_shape})
    app.include_router(predict.router)
    app.include_router(info.router)
    app.include_router(v2.router)
    app.include_router(openai.router)
    install_docs(app)
    app.edge = partial(_edge, state=state, max_body_bytes=settings.max_body_bytes)
    if settings.admin_token is not None and settings.admin_token.get_secret_value():
        app.include_router(admin.router)
    return app
