"""The OpenAI-compatible API of a generation model: `/v1/models`, `/v1/completions`,
`/v1/chat/completions`, JSON or streamed (SSE `data:` chunks, then `data: [DONE]`).

The API key is the bearer token (or `X-API-Key`); `X-AIM-Tier` lowers the tier; the rate limit
and the keyed noise are those of `/predict`. Errors are OpenAI's `{"error": {"message", "type",
"param", "code"}}` with the status the SDK maps to its exceptions (bad input is 400, as OpenAI
answers it, where the rest of this server says 422).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from ...errors import Forbidden, InvalidInput, ServiceError
from ...serving.batching import watch_disconnect
from ..body import json_response, read_model, request_body
from ..deps import Caller, CurrentCaller, InferenceCaller, State
from ..state import AppState
from .openai_run import Run, build_request, chat_prompt, completion_prompt, error_event, start
from .openai_schemas import (
    ChatRequest,
    CompletionRequest,
    Envelope,
    check_prompt_size,
    model_list,
    usage,
)

router = APIRouter(prefix="/v1", tags=["openai"])
_CREATED = int(time.time())  # the model list's `created`: when this server process started
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": text}
    for code, text in {
        400: "Invalid input; `param` names it",
        401: "No key, or an unknown key",
        403: "Tier above the key's, or a feature the tier does not include",
        404: "Not a generation model, or another model's name",
        429: "Rate limit of the tier; see Retry-After",
        503: "Queue full or not ready; see Retry-After",
    }.items()
}


class NotFound(ServiceError):
    status = 404
    code = "model_not_found"


def error_shape(status: int, code: str, message: str, field: str | None) -> tuple[int, bytes]:
    """OpenAI's error object; bad input (422, 415 here) is OpenAI's 400."""
    if status in (415, 422):
        status = 400
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": field, "code": code}}
    return status, orjson.dumps(body)


def _lm(caller: Caller) -> Any:
    """The served causal LM; a vision model has no OpenAI API."""
    runtime = caller.runtime
    if runtime.task != "generation":
        raise NotFound(
            f"the OpenAI API serves generation models; this server serves a {runtime.task} "
            "model (POST /predict, /v2)",
            "model",
        )
    return runtime.adapter


def _check_model(name: str, state: AppState) -> None:
    if name != state.name:
        raise NotFound(
            f"`model`: {name!r} is not served here; this server serves {state.name!r}", "model"
        )


@router.get("/models", responses=_RESPONSES, summary="The served model (OpenAI's model list)")
async def list_models(state: State, caller: CurrentCaller) -> Response:
    _lm(caller)
    return json_response(model_list(state.name, _CREATED))


async def _serve(
    request: Request,
    state: AppState,
    caller: Caller,
    kind: type[CompletionRequest | ChatRequest],
) -> Response:
    """The caller dependency has checked key, readiness, tier and queue; parse, cap the prompt's
    length, then the tier policy (rate limit, quota; `logit_bias` is focus), then tokenize and
    answer."""
    arrived = time.perf_counter()
    lm = _lm(caller)
    body = await read_model(request, kind)
    _check_model(body.model, state)
    if body.logprobs:
        raise InvalidInput("`logprobs`: not served yet", "logprobs")
    check_prompt_size(body)
    # Limits and quotas before the tokenizer and the chat template: a refused request costs
    # no tokenizer time.
    try:
        caller = await caller.admit(1, bool(body.logit_bias))
    except Forbidden as exc:
        if exc.field != "focus":
            raise
        raise Forbidden(f"`logit_bias`: {exc.message}", "logit_bias") from None
    if isinstance(body, ChatRequest):
        prompt = chat_prompt(lm, body.messages)
    else:
        prompt = completion_prompt(lm, body.prompt)
    return await _answer(request, state, caller, lm, body, prompt, arrived)


def _endpoint(kind: type[CompletionRequest | ChatRequest]) -> Any:
    async def endpoint(request: Request, state: State, caller: InferenceCaller) -> Response:
        return await _serve(request, state, caller, kind)

    return endpoint


for _path, _kind, _summary in (
    ("/completions", CompletionRequest, "Complete a prompt at the caller's tier"),
    ("/chat/completions", ChatRequest, "Answer a chat at the caller's tier"),
):
    router.add_api_route(
        _path,
        _endpoint(_kind),
        methods=["POST"],
        name=_path.strip("/").replace("/", "_"),
        responses=_RESPONSES,
        openapi_extra=request_body(_kind),
        summary=_summary,
    )


async def _answer(
    request: Request,
    state: AppState,
    caller: Caller,
    lm: Any,
    body: CompletionRequest | ChatRequest,
    prompt: tuple[int, ...],
    arrived: float,
) -> Response:
    job_request = build_request(body, prompt, caller, lm, state)
    run = await start(state, job_request, caller, arrived, body.stops(), lm, request.scope)
    envelope = Envelope(isinstance(body, ChatRequest), state.name)
    watcher = asyncio.ensure_future(watch_disconnect(request.receive, run.job.cancel))
    if body.stream:
        with_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = _stream(run, envelope, len(prompt), with_usage, watcher)
        return StreamingResponse(stream, media_type="text/event-stream", headers=_SSE_HEADERS)
    text, finish = "", "stop"
    try:
        async for piece, reason in run.pieces():
            text += piece
            finish = reason or finish
    finally:
        watcher.cancel()
        run.job.cancel()
    return json_response(
        envelope.whole(text, finish, None, usage(len(prompt), run.completion_tokens))
    )


def _sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _stream(
    run: Run, envelope: Envelope, prompt_tokens: int, with_usage: bool, watcher: Any
) -> AsyncIterator[bytes]:
    """OpenAI's chunks; owns ``watcher`` and ends the job however the stream ends."""
    try:
        if envelope.chat:
            yield _sse(envelope.chunk("", None, first=True))
        async for piece, reason in run.pieces():
            if piece:
                yield _sse(envelope.chunk(piece, None))
            if reason is not None:
                yield _sse(envelope.chunk(None, reason))
        if with_usage:
            yield _sse(envelope.usage_chunk(usage(prompt_tokens, run.completion_tokens)))
        yield b"data: [DONE]\n\n"
    except ServiceError as exc:
        yield _sse(error_event(exc))
    finally:
        watcher.cancel()
        run.job.cancel()
