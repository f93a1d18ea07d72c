"""`GET /model`, `/healthz`, `/readyz`, `/metrics`."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from ...observability.metrics import exposition
from ..body import json_response
from ..deps import CurrentCaller, State
from ..schemas import ERROR_RESPONSES, ModelInfo

router = APIRouter()


@router.get("/model", response_model=ModelInfo, responses=ERROR_RESPONSES, tags=["model"])
async def model_info(state: State, caller: CurrentCaller) -> Response:
    """The served model and the tiers this key may use."""
    adapter = caller.runtime.adapter
    spec = adapter.input_spec.to_dict() if hasattr(adapter, "input_spec") else {}
    return json_response(
        {
            "name": state.name,
            "task": caller.runtime.task,
            "labels": list(getattr(adapter, "labels", [])),
            "input": spec,
            "tiers": caller.allowed,
            "tier": caller.tier.name,
            "digest": caller.runtime.digest_info,
        }
    )


@router.get("/healthz", tags=["health"], responses={503: {"description": "Failed"}})
async def healthz(state: State) -> Response:
    """Liveness: the process answers, its model has not failed to load and its worker (batcher
    or scheduler) has not died; 503 otherwise, so that an orchestrator restarts it."""
    if state.alive:
        return json_response({"status": "ok"})
    return json_response({"status": "failed", "error": state.load_error or "worker stopped"}, 503)


@router.get("/readyz", tags=["health"], responses={503: {"description": "Not ready"}})
async def readyz(state: State) -> Response:
    """Readiness: the model is loaded, warmed up and the tiers calibrated."""
    if state.serving:
        return json_response({"status": "ready"})
    if state.model is not None:
        return json_response({"status": "stopped"}, status=503)
    status = "failed" if state.load_error else "loading"
    return json_response({"status": status}, status=503)


@router.get("/metrics", tags=["health"], include_in_schema=True)
async def metrics(state: State) -> Response:
    """Prometheus metrics."""
    return Response(exposition(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
