"""`POST /predict`: parse the body, submit it to the batcher, encode the predictions.

The caller dependency has authenticated the key, resolved the tier and checked the queue before
the body is read; generation models are answered by `generate.py`. A raw `image/jpeg` or
`image/png` body is one image (`raw_image.py`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from ..body import json_response, read_model, request_body
from ..deps import InferenceCaller, State
from ..parsing import build_image_item, build_item
from ..raw_image import is_raw_image, read_raw_image
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
async def predict(request: Request, state: State, caller: InferenceCaller) -> Response:
    runtime = caller.runtime
    if runtime.task == "generation":
        from .generate import generate

        return await generate(request, state, caller)
    if is_raw_image(request):
        raw = await read_raw_image(request)
        item = await build_image_item(raw, caller, state.settings)
    else:
        body = await read_model(request, PredictRequest)
        item = await build_item(body.inputs, body.focus, body.top_k, caller, state.settings)
    assert runtime.batcher is not None
    served = caller.tiers.get(item.tier)  # the tier policy's verdict: queued at that tier
    predictions = await runtime.batcher.submit(item, served.rank, served.name, request.receive)
    return json_response(
        {"model": state.name, "tier": item.tier, "task": runtime.task, "predictions": predictions}
    )


def route() -> APIRoute:
    """The registered `POST /predict` route (api/direct.py serves it without FastAPI's routing)."""
    return next(r for r in router.routes if isinstance(r, APIRoute) and r.path == "/predict")
