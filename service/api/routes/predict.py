"""`POST /predict`: authenticate, resolve the tier, charge the rate limit, validate, batch."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from ...batching import submit_until_disconnect
from ..body import json_response, read_model, request_body
from ..deps import TIER_HEADER, State, authenticate, charge, resolve_caller
from ..parsing import build_item
from ..schemas import ERROR_RESPONSES, GenerateRequest, PredictRequest, PredictResponse

router = APIRouter(tags=["inference"])


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=ERROR_RESPONSES,
    # Vision models take PredictRequest, generation models GenerateRequest.
    openapi_extra=request_body(PredictRequest, GenerateRequest),
    summary="Predict at the caller's tier (or a lower one named in X-AIM-Tier)",
)
async def predict(request: Request, state: State) -> Response:
    record = authenticate(request, state)
    model, tiers = state.require_ready()
    caller = resolve_caller(request, record, tiers, request.headers.get(TIER_HEADER))
    charge(caller)
    if model.task == "generation":
        from .generate import generate

        return await generate(request, state, caller)
    assert state.batcher is not None
    state.batcher.check_capacity()
    body = await read_model(request, PredictRequest)
    seed = state.keyed.row_seed(caller.key.id, caller.tier.name)
    item = await build_item(
        body.inputs, body.focus, body.top_k, caller, model.adapter, state.settings, seed
    )
    predictions = await submit_until_disconnect(state.batcher, item, request.receive)
    return json_response(
        {
            "model": state.name,
            "tier": caller.tier.name,
            "task": model.task,
            "predictions": predictions,
        }
    )
