"""OpenAI requests on the generation scheduler: prompt, tier policy, one run, stop strings.

The prompt of a chat is the tokenizer's chat template (with the generation prompt added). A
tokenizer without one gets a plain transcript (:data:`DEFAULT_CHAT_LINE`): one line per
message, ``System: ...``, ``User: ...``, ``Assistant: ...``, then ``Assistant:`` for the reply.

Streaming and non-streaming answers read the same :class:`Run`, so they carry the same text:
token ids become text pieces (:class:`TextPieces`), and a stop string ends the text before it
(what might begin a stop string is held back until it cannot). ``logit_bias`` becomes token focus
(up for a positive bias, down for a negative one, of strength ``|bias|``), so it is allowed only
where the tier allows focus and counts against the same entry limit.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

from ...errors import InvalidInput, ServiceError
from ...generation import GenerationJob, GenerationRequest, TextPieces, Token, sampling_seed
from ...models.causal_lm import CausalLM
from ..deps import Caller
from ..metering import count_tokens
from ..schemas import FocusItem
from ..state import AppState
from .generate import token_focus
from .openai_schemas import MAX_LOGIT_BIAS, ChatMessage, ChatRequest, CompletionRequest

DEFAULT_CHAT_LINE = "{Role}: {content}"
"""A message's line in the default chat prompt; the lines end with ``Assistant:``."""
_MAX_SEED = (1 << 63) - 1


def chat_prompt(lm: CausalLM, messages: list[ChatMessage]) -> tuple[int, ...]:
    """Token ids of a chat: the tokenizer's template, or the plain transcript."""
    turns = [{"role": m.role, "content": m.text(f"messages[{i}]")} for i, m in enumerate(messages)]
    tokenizer = lm.tokenizer
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # a template may refuse a conversation (roles, order)
            raise InvalidInput(
                f"`messages`: the model's chat template refused them: {exc}", "messages"
            ) from None
        # The template writes the special tokens (BOS) itself.
        return tuple(int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"])
    lines = [
        DEFAULT_CHAT_LINE.format(Role=t["role"].capitalize(), content=t["content"]) for t in turns
    ]
    return tuple(lm.encode("\n".join([*lines, "Assistant:"])))


def completion_prompt(lm: CausalLM, prompt: str | list[str] | list[int]) -> tuple[int, ...]:
    if isinstance(prompt, str):
        return tuple(lm.encode(prompt))
    if prompt and all(isinstance(p, int) for p in prompt):
        bad = [p for p in prompt if not 0 <= int(p) < lm.vocab_size]
        if bad:
            raise InvalidInput(
                f"`prompt`: token ids have to be in [0, {lm.vocab_size}), got {bad[0]}", "prompt"
            )
        return tuple(int(p) for p in prompt)
    if len(prompt) == 1:
        return tuple(lm.encode(str(prompt[0])))
    raise InvalidInput(f"`prompt`: one prompt per request is served, got {len(prompt)}", "prompt")


def _bias_focus(
    body: CompletionRequest | ChatRequest, lm: CausalLM, state: AppState
) -> tuple[Any, ...]:
    bias = body.logit_bias or {}
    items = []
    for token, value in bias.items():
        if not token.isdigit() or not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
            raise InvalidInput(
                f"`logit_bias`: keys are token ids and values biases in [-{MAX_LOGIT_BIAS}, "
                f"{MAX_LOGIT_BIAS}], got {token!r}: {value!r}",
                "logit_bias",
            )
        direction = "up" if value >= 0 else "down"
        items.append(
            FocusItem.model_validate(
                {"token": int(token), "direction": direction, "strength": abs(value)}
            )
        )
    try:
        return token_focus(items, lm, state.settings.max_focus_entries)
    except InvalidInput as exc:
        raise InvalidInput(f"`logit_bias`: {exc.message}", "logit_bias") from None


def build_request(
    body: CompletionRequest | ChatRequest,
    prompt_ids: tuple[int, ...],
    caller: Caller,
    lm: CausalLM,
    state: AppState,
) -> GenerationRequest:
    """The scheduler's request, for a caller the tier policy has admitted: the tier's σ and
    keyed seed (``caller.seed``, as /predict)."""
    body.check_n()
    if not prompt_ids:
        raise InvalidInput("`prompt`: encodes to no tokens", "prompt")
    asked = body.max_tokens
    if isinstance(body, ChatRequest) and body.max_completion_tokens is not None:
        asked = body.max_completion_tokens
    room = lm.max_context - len(prompt_ids)
    if room < 1 or (asked is not None and asked > room):
        field = "max_tokens" if asked is not None else "messages"
        raise InvalidInput(
            f"`{field}`: this model's context is {lm.max_context} tokens; the prompt takes "
            f"{len(prompt_ids)}, which leaves {max(room, 0)}, but {asked or 1} were asked for",
            field,
        )
    seed = caller.seed
    draw = sampling_seed(seed, prompt_ids)
    if body.seed is not None:  # the client's seed varies sampling, mixed with the keyed one
        digest = hashlib.sha256(f"{draw}:{body.seed}".encode()).digest()
        draw = int.from_bytes(digest[:8], "little") & _MAX_SEED
    return GenerationRequest(
        prompt_ids=prompt_ids,
        max_new_tokens=asked or room,
        temperature=body.temperature,
        top_p=body.top_p,
        sigma=caller.tier.sigma,
        seed=seed,
        focus=_bias_focus(body, lm, state),
        sampling_seed=draw,
    )


class StopText:
    """Text pieces in, the text to send out: ends before the first stop string, and holds back
    a tail that could still become one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.text = ""
        self.sent = 0

    def feed(self, piece: str) -> tuple[str, bool]:
        """What may go out now, and whether a stop string was reached."""
        self.text += piece
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stops) if i >= 0]
        if hits:
            end = min(hits)
            out, self.sent = self.text[self.sent : end], end
            return out, True
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.text) - self.sent), 0, -1):
                if self.text.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        end = len(self.text) - hold
        out, self.sent = self.text[self.sent : end], end
        return out, False

    def flush(self) -> str:
        out, self.sent = self.text[self.sent :], len(self.text)
        return out


class Run:
    """One job's text as OpenAI pieces: ``(text, finish_reason)``, the last with a reason."""

    def __init__(
        self,
        job: GenerationJob,
        tokens: AsyncIterator[Token],
        first: Token,
        lm: CausalLM,
        stops: list[str],
    ) -> None:
        self.job = job
        self.tokens = tokens
        self.first = first
        self.lm = lm
        self.stops = stops
        self.completion_tokens = 0

    async def pieces(self) -> AsyncIterator[tuple[str, str | None]]:
        """Raises ``CancelledError`` when the job ends without a finish (the client left)."""
        pieces, scan = TextPieces(self.lm.decode), StopText(self.stops)
        token: Token | None = self.first
        while token is not None:
            if token.finish_reason != "stop":  # the EOS token is not part of the text
                self.completion_tokens += 1
                piece = pieces.add(token.token_id)
                if token.finish_reason is not None:
                    piece += pieces.flush()
                out, stopped = scan.feed(piece)
                if stopped:
                    self.job.cancel()  # the rest would be cut anyway: stop decoding it
                    yield out, "stop"
                    return
                if out:
                    yield out, None
            if token.finish_reason is not None:
                yield scan.flush(), "length" if token.finish_reason == "length" else "stop"
                return
            token = await anext(self.tokens, None)
        raise asyncio.CancelledError


async def start(
    state: AppState,
    request: GenerationRequest,
    caller: Caller,
    arrived: float,
    stops: list[str],
    lm: CausalLM,
    scope: MutableMapping[str, Any] | None = None,
) -> Run:
    """Submit and wait for the first token, so an error until then is a plain HTTP error."""
    assert state.generator is not None
    job = state.generator.submit(request, caller.tier.name, arrived, caller.tier.rank)
    tokens = job.tokens() if scope is None else count_tokens(scope, job.tokens())
    try:
        first = await anext(tokens, None)
    except BaseException:
        job.cancel()
        raise
    if first is None:  # the client went away before the first token (499 in the log)
        raise asyncio.CancelledError
    return Run(job, tokens, first, lm, stops)


def error_event(exc: ServiceError) -> dict[str, Any]:
    """An error after a stream has started: the stream ends with it, in OpenAI's shape."""
    return {"error": {"message": exc.message, "type": "server_error", "code": exc.code}}
