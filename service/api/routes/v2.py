"""Open Inference Protocol v2 (KServe, Triton): health, metadata and infer, JSON or binary.

Tier and focus travel as request `parameters` (or the `X-AIM-Tier` header); the key in the same
headers as `/predict`. Outputs are labels, indices, scores of the modulated logits, or masks;
never logits. Every route also answers under `/versions/1`, the one version served. Errors are
`{"error": "message"}`, a string as the protocol has it (see :func:`error_shape`).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from ... import __version__
from ...errors import InvalidInput, ServiceError
from ..body import json_response, request_body
from ..deps import Caller, InferenceCaller, State
from ..parsing import build_item
from ..schemas import ERROR_RESPONSES
from ..state import AppState
from .v2_codec import (
    HEADER_LENGTH,
    InferParameters,
    InferRequest,
    OutputTensor,
    decompress,
    encode_response,
    parse_infer,
    select_outputs,
)

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])
VERSION = "1"
_UNKNOWN: dict[int | str, dict[str, Any]] = {404: {"description": "Unknown model or version"}}


class NotFound(ServiceError):
    """No model (or version) of that name is served here."""

    status = 404
    code = "not_found"


def error_shape(status: int, code: str, message: str, field: str | None) -> tuple[int, bytes]:
    """OIP errors: `{"error": "<message>"}` (the message names the field), status unchanged."""
    return status, orjson.dumps({"error": message})


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return {"name": "aim-serving", "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", responses={503: {"description": "Not ready"}})
async def ready(state: State) -> Response:
    ok = state.serving
    return json_response({"ready": ok}, status=200 if ok else 503)


def _check(state: AppState, name: str, version: str | None) -> None:
    if name != state.name:
        raise NotFound(
            f"model {name!r} is not served here; this server serves {state.name!r}", "name"
        )
    if version is not None and version != VERSION:
        raise NotFound(
            f"model {name!r} has no version {version!r}; the one version is {VERSION!r}",
            "version",
        )


def _vision_model(state: AppState) -> Any:
    model, _ = state.require_ready()
    if model.task == "generation":
        raise InvalidInput(
            "generation models are served by POST /predict and the OpenAI API under /v1", "name"
        )
    return model


def _metadata(state: AppState, name: str, version: str | None) -> Response:
    _check(state, name, version)
    model = _vision_model(state)
    shape = list(model.adapter.input_spec.shape)
    return json_response(
        {
            "name": state.name,
            "versions": [VERSION],
            "platform": "pytorch",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, *shape]}],
            "outputs": [
                {"name": o.name, "datatype": o.datatype, "shape": o.shape}
                for o in _outputs(model.task, [], shape)
            ],
        }
    )


# Each route answers with and without `/versions/{version}`: one version is served.


@router.get("/models/{name}/versions/{version}", responses=_UNKNOWN)
@router.get("/models/{name}", responses=_UNKNOWN)
async def model_metadata(name: str, state: State, version: str | None = None) -> Response:
    return _metadata(state, name, version)


@router.get("/models/{name}/versions/{version}/ready", responses=_UNKNOWN)
@router.get("/models/{name}/ready", responses=_UNKNOWN)
async def model_ready(name: str, state: State, version: str | None = None) -> Response:
    _check(state, name, version)
    ok = state.serving
    return json_response({"name": name, "ready": ok}, status=200 if ok else 503)


@router.post(
    "/models/{name}/versions/{version}/infer",
    responses={**ERROR_RESPONSES, **_UNKNOWN},
    openapi_extra=request_body(InferRequest),
    summary="Infer at the caller's tier (JSON, or binary tensors after a JSON header)",
)
@router.post(
    "/models/{name}/infer",
    responses={**ERROR_RESPONSES, **_UNKNOWN},
    openapi_extra=request_body(InferRequest),
    summary="Infer at the caller's tier (JSON, or binary tensors after a JSON header)",
)
async def infer(
    name: str, request: Request, state: State, caller: InferenceCaller, version: str | None = None
) -> Response:
    return await _infer(state, request, caller, name, version)


async def _infer(
    state: AppState, request: Request, caller: Caller, name: str, version: str | None
) -> Response:
    _check(state, name, version)
    model = _vision_model(state)
    raw = decompress(
        await request.body(),
        request.headers.get("content-encoding"),
        state.settings.max_body_bytes,
    )
    parsed = parse_infer(raw, request.headers.get(HEADER_LENGTH))
    body = parsed.body
    _check_body_names(body, name, version)
    params = body.parameters or InferParameters.model_validate({})
    try:
        item = await build_item(
            parsed.items, params.focus, params.top_k, caller, state.settings, tier=params.tier
        )
    except InvalidInput as exc:
        raise _oip_field(exc) from None
    assert state.batcher is not None
    # Queued at the tier served: `parameters.tier` in the body may have lowered the header's.
    served = caller.tiers.get(item.tier)
    preds = await state.batcher.submit(item, served.rank, served.name, request.receive)
    if model.task == "segmentation" and len({_mask_size(p) for p in preds}) > 1:
        raise InvalidInput(
            "`inputs[0].data`: the images of one request have to share a size (the mask is one "
            "tensor); send them in separate requests",
            "inputs[0].data",
        )
    shape = list(model.adapter.input_spec.shape)
    chosen = select_outputs(_outputs(model.task, preds, shape), body)
    header: dict[str, Any] = {"model_name": state.name, "model_version": VERSION}
    if body.id is not None:
        header["id"] = body.id
    header["parameters"] = {"tier": item.tier}
    content, json_length = encode_response(header, chosen)
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(json_length)},
    )


def _check_body_names(body: InferRequest, name: str, version: str | None) -> None:
    if body.model_name is not None and body.model_name != name:
        raise InvalidInput(
            f"`model_name`: {body.model_name!r} differs from the model {name!r} of the URL",
            "model_name",
        )
    if body.model_version not in (None, "", VERSION) or (
        version is not None and body.model_version not in (None, "", version)
    ):
        raise InvalidInput(
            f"`model_version`: {body.model_version!r} is not served; the one version is "
            f"{VERSION!r}",
            "model_version",
        )


def _oip_field(exc: InvalidInput) -> InvalidInput:
    """`build_item` names /predict fields; say where they are in an OIP request instead."""
    field = exc.field or ""
    message = exc.message
    if field.startswith("inputs["):
        new = "inputs[0].data" + field[field.index("]") + 1 :]
    elif field in ("focus", "top_k") or field.startswith("focus["):
        new = f"parameters.{field}"
    else:
        return exc
    return InvalidInput(message.replace(f"`{field}`", f"`{new}`", 1), new)


def _mask_size(pred: dict[str, Any]) -> tuple[int, int]:
    return len(pred["mask"]), len(pred["mask"][0])


def _outputs(task: str, preds: list[dict[str, Any]], shape: list[int]) -> list[OutputTensor]:
    """The model's outputs for ``preds`` (none yet for metadata: shapes then say -1)."""
    n = len(preds) if preds else -1
    if task == "classification":
        return [
            OutputTensor("label", "BYTES", [n], [p["label"] for p in preds]),
            OutputTensor("index", "INT64", [n], [p["index"] for p in preds]),
            OutputTensor("score", "FP32", [n], [p["score"] for p in preds]),
        ]
    if preds:
        h, w = len(preds[0]["mask"]), len(preds[0]["mask"][0])
    else:
        h, w = shape[-2:]
    flat = [v for p in preds for row in p["mask"] for v in row]
    return [OutputTensor("mask", "INT64", [n, h, w], flat)]
