"""`POST /predict` for generation models: validate, queue on the scheduler, answer JSON or SSE.

The caller dependency has authenticated the key and resolved the tier; this module turns the body
into a :class:`GenerationRequest` (the tier policy, rate limit included, and every refusal first,
naming the field), submits it, and answers either at once with the whole text or as
`text/event-stream`: one `data: {"token": id, "text": piece}` per token, a final
`data: {"finish_reason": ..., "text": full text}`, then `data: [DONE]`. Both carry the same text.
A client that goes away cancels its row, so it stops costing decoding steps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import Request
from starlette.responses import Response, StreamingResponse

from ...errors import InvalidInput, ServiceError
from ...generation import GenerationJob, GenerationRequest, TextPieces, Token, sampling_seed
from ...models.causal_lm import CausalLM
from ...models.errors import InputError
from ...modulation import FocusEntry, ModulationArgumentError
from ...serving.batching import watch_disconnect
from ..body import json_response, read_model
from ..deps import Caller
from ..metering import count_tokens
from ..schemas import FocusItem, GenerateRequest
from ..state import AppState

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def generate(request: Request, state: AppState, caller: Caller) -> Response:
    """Generate text for one prompt at the caller's tier, as JSON or as a token stream."""
    arrived = time.perf_counter()
    model, _ = state.require_ready()
    lm: CausalLM = model.adapter
    scheduler = state.generator
    assert scheduler is not None
    tier = caller.tier
    body = await read_model(request, GenerateRequest)
    generation = await build_request(body, caller, lm, state)
    job = scheduler.submit(generation, tier.name, arrived, tier.rank)
    watcher = asyncio.ensure_future(watch_disconnect(request.receive, job.cancel))
    try:
        tokens = count_tokens(request.scope, job.tokens())
        # The first token before the answer starts: an error until then is a plain HTTP error.
        first = await anext(tokens, None)
        if first is None:  # the client went away: nobody reads an answer (499 in the log)
            raise asyncio.CancelledError
        if body.stream:
            stream = _event_stream(first, tokens, job, lm, watcher)
            return StreamingResponse(stream, media_type="text/event-stream", headers=_SSE_HEADERS)
        ids, finish = await _collect(first, tokens)
    except BaseException:
        watcher.cancel()
        job.cancel()
        raise
    watcher.cancel()
    return json_response(
        {
            "model": state.name,
            "tier": caller.tier.name,
            "task": "generation",
            "text": lm.decode(ids),
            "tokens": ids,
            "finish_reason": finish,
        }
    )


async def build_request(
    body: GenerateRequest, caller: Caller, lm: CausalLM, state: AppState
) -> GenerationRequest:
    """Tier policy, focus tokens and context length, then the request with its keyed seeds."""
    caller = await caller.admit(1, bool(body.focus))
    tier = caller.tier
    focus = token_focus(body.focus, lm, state.settings.max_focus_entries)
    prompt_ids = tuple(lm.encode(body.prompt))
    if not prompt_ids:
        raise InvalidInput("`prompt`: encodes to no tokens", "prompt")
    room = lm.max_context - len(prompt_ids)
    if room < 1:
        raise InvalidInput(
            f"`prompt`: is {len(prompt_ids)} tokens; the model's context holds "
            f"{lm.max_context}, which leaves no room to generate",
            "prompt",
        )
    if body.max_new_tokens > room:
        raise InvalidInput(
            f"`max_new_tokens`: has to be at most {room} for this prompt of {len(prompt_ids)} "
            f"tokens (the model's context holds {lm.max_context}), but is {body.max_new_tokens}",
            "max_new_tokens",
        )
    seed = caller.seed
    return GenerationRequest(
        prompt_ids=prompt_ids,
        max_new_tokens=body.max_new_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        sigma=tier.sigma,
        seed=seed,
        focus=focus,
        sampling_seed=sampling_seed(seed, prompt_ids),
    )


def token_focus(items: list[FocusItem], lm: CausalLM, max_entries: int) -> tuple[FocusEntry, ...]:
    """Focus entries on tokens, named by text or id; each refusal names `focus[i].<field>`."""
    if len(items) > max_entries:
        raise InvalidInput(f"`focus`: at most {max_entries} entries, got {len(items)}", "focus")
    entries = []
    for i, item in enumerate(items):
        where = f"focus[{i}]"
        if item.class_ is not None:
            raise InvalidInput(
                f"`{where}.class`: generation models take a `token` (its text or id), not a class",
                f"{where}.class",
            )
        if item.region is not None:
            raise InvalidInput(
                f"`{where}.region`: only segmentation models take a region", f"{where}.region"
            )
        if item.token is None:
            raise InvalidInput(
                f"`{where}.token`: name a token (its text or its id)", f"{where}.token"
            )
        try:
            token_id = lm.token_id(item.token)
            entries.append(FocusEntry.parse(token_id, item.direction, item.strength))
        except InputError as exc:
            raise InvalidInput(f"`{where}.token` {exc.reason}", f"{where}.token") from None
        except ModulationArgumentError as exc:
            field = f"{where}.{exc.argument}"
            raise InvalidInput(f"`{field}`: {exc}", field) from None
    return tuple(entries)


def _sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _collect(first: Token, rest: AsyncIterator[Token]) -> tuple[list[int], str]:
    """The text's token ids and the finish reason; cancelled (499 in the log) if the client
    went away before the end."""
    ids: list[int] = []
    token: Token | None = first
    while token is not None:
        if token.finish_reason != "stop":  # the EOS token is not part of the text
            ids.append(token.token_id)
        if token.finish_reason is not None:
            return ids, token.finish_reason
        token = await anext(rest, None)
    raise asyncio.CancelledError


async def _event_stream(
    first: Token,
    rest: AsyncIterator[Token],
    job: GenerationJob,
    lm: CausalLM,
    watcher: asyncio.Future[None],
) -> AsyncIterator[bytes]:
    """SSE events of one job; an error after the stream started becomes an `error` event.
    Owns ``watcher`` and ends ``job`` however the stream ends (a gone client included)."""
    pieces = TextPieces(lm.decode)
    token: Token | None = first
    try:
        while token is not None:
            if token.finish_reason != "stop":  # the EOS token is not part of the text
                piece = pieces.add(token.token_id)
                if token.finish_reason is not None:
                    piece += pieces.flush()
                yield _sse({"token": token.token_id, "text": piece})
            if token.finish_reason is not None:
                text = lm.decode(pieces.ids)
                yield _sse({"finish_reason": token.finish_reason, "text": text})
                yield b"data: [DONE]\n\n"
                return
            token = await anext(rest, None)
    except ServiceError as exc:
        error = {"code": exc.code, "message": exc.message}
        yield b"event: error\n" + _sse({"error": error})
    finally:
        watcher.cancel()
        job.cancel()
