"""Open Inference Protocol v2 (KServe): health, model metadata and infer.

Tier and focus travel as request `parameters`; the key in the same headers as `/predict`.
Outputs are labels, indices, scores of the modulated logits, or masks; never logits.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from ... import __version__
from ...batching import submit_until_disconnect
from ...errors import InvalidInput, ServiceError
from ..body import json_response, read_model, request_body
from ..deps import TIER_HEADER, State, authenticate, charge, resolve_caller
from ..parsing import build_item
from ..schemas import ERROR_RESPONSES, NESTED_NUMBERS, FocusItem

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])


class NotFound(ServiceError):
    """No model of that name is served here."""

    status = 404
    code = "not_found"


class InferTensor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=256)
    shape: list[int] = Field(min_length=1, max_length=8)
    datatype: Literal["FP32", "FP64", "FP16", "INT8", "INT16", "INT32", "INT64", "UINT8"]
    data: list[Any] = Field(json_schema_extra={"items": NESTED_NUMBERS})
    parameters: dict[str, str | int | float | bool] | None = None


class InferParameters(BaseModel):
    # OIP clients may send parameters of their own; ignore them rather than fail.
    model_config = ConfigDict(extra="ignore")

    tier: str | None = None
    focus: list[FocusItem] = Field(default_factory=list)
    top_k: int | None = Field(None, ge=1, le=1000)


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(max_length=256)


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=256)
    inputs: list[InferTensor] = Field(min_length=1, max_length=1)
    outputs: list[RequestedOutput] | None = None
    parameters: InferParameters | None = None


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return {"name": "aim-serving", "version": __version__, "extensions": []}


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", responses={503: {"description": "Not ready"}})
async def ready(state: State) -> Response:
    ok = state.serving
    return json_response({"ready": ok}, status=200 if ok else 503)


def _check_name(state: Any, name: str) -> None:
    if name != state.name:
        raise NotFound(
            f"model {name!r} is not served here; this server serves {state.name!r}", "name"
        )


@router.get("/models/{name}", responses={404: {"description": "Unknown model"}})
async def model_metadata(name: str, state: State) -> Response:
    _check_name(state, name)
    model, _ = state.require_ready()
    if model.task == "generation":
        raise InvalidInput("generation models are served by POST /predict", "name")
    adapter = model.adapter
    shape = list(adapter.input_spec.shape)
    outputs = (
        [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "index", "datatype": "INT64", "shape": [-1]},
            {"name": "score", "datatype": "FP32", "shape": [-1]},
        ]
        if model.task == "classification"
        else [{"name": "mask", "datatype": "INT64", "shape": [-1, *shape[-2:]]}]
    )
    return json_response(
        {
            "name": state.name,
            "versions": ["1"],
            "platform": "pytorch",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, *shape]}],
            "outputs": outputs,
        }
    )


@router.get("/models/{name}/ready", responses={404: {"description": "Unknown model"}})
async def model_ready(name: str, state: State) -> Response:
    _check_name(state, name)
    ok = state.serving
    return json_response({"name": name, "ready": ok}, status=200 if ok else 503)


def _split_items(tensor: InferTensor) -> list[Any]:
    """OIP data may be flat (row-major) or nested; return one array per item of the batch."""
    shape = tensor.shape
    if any(d < 1 for d in shape) or math.prod(shape) > 50_000_000:
        raise InvalidInput(
            f"`inputs[0].shape`: {shape} is not a valid batch shape", "inputs[0].shape"
        )
    try:
        arr = np.asarray(tensor.data, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput("`inputs[0].data`: has to be numbers", "inputs[0].data") from None
    if arr.size != math.prod(shape):
        raise InvalidInput(
            f"`inputs[0].data`: holds {arr.size} values, shape {shape} needs {math.prod(shape)}",
            "inputs[0].data",
        )
    return list(arr.reshape(shape))


@router.post(
    "/models/{name}/infer",
    responses={**ERROR_RESPONSES, 404: {"description": "Unknown model"}},
    openapi_extra=request_body(InferRequest),
)
async def infer(name: str, request: Request, state: State) -> Response:
    _check_name(state, name)
    record = authenticate(request, state)
    model, tiers = state.require_ready()
    if model.task == "generation":
        raise InvalidInput("generation models are served by POST /predict", "name")
    assert state.batcher is not None
    state.batcher.check_capacity()
    body = await read_model(request, InferRequest)
    params = body.parameters or InferParameters(tier=None, top_k=None)
    caller = resolve_caller(request, record, tiers, params.tier or request.headers.get(TIER_HEADER))
    charge(caller)
    items = _split_items(body.inputs[0])
    seed = state.keyed.row_seed(caller.key.id, caller.tier.name)
    try:
        item = await build_item(
            items, params.focus, params.top_k, caller, model.adapter, state.settings, seed
        )
    except InvalidInput as exc:
        field = exc.field or ""
        if field.startswith("inputs["):
            field = "inputs[0].data" + field[field.index("]") + 1 :]
        elif field in ("focus", "top_k") or field.startswith("focus["):
            field = f"parameters.{field}"
        raise InvalidInput(exc.message, field) from None
    assert state.batcher is not None
    preds = await submit_until_disconnect(state.batcher, item, request.receive)
    n = len(preds)
    if model.task == "classification":
        outputs = [
            {
                "name": "label",
                "datatype": "BYTES",
                "shape": [n],
                "data": [p["label"] for p in preds],
            },
            {
                "name": "index",
                "datatype": "INT64",
                "shape": [n],
                "data": [p["index"] for p in preds],
            },
            {
                "name": "score",
                "datatype": "FP32",
                "shape": [n],
                "data": [p["score"] for p in preds],
            },
        ]
    else:
        h, w = len(preds[0]["mask"]), len(preds[0]["mask"][0])
        flat = [v for p in preds for row in p["mask"] for v in row]
        outputs = [{"name": "mask", "datatype": "INT64", "shape": [n, h, w], "data": flat}]
    return json_response(
        {
            "model_name": state.name,
            "model_version": "1",
            "id": body.id,
            "parameters": {"tier": caller.tier.name},
            "outputs": outputs,
        }
    )
