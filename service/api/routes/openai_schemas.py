"""Request bodies of the OpenAI-compatible API, and the objects it answers with.

Fields OpenAI has and this server does not honour are either accepted at the value that means
"off" (`presence_penalty: 0`, `echo: false`, ...) or refused with a 400 naming them; fields
OpenAI does not have are refused (as OpenAI does), so a typo is never silently ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ...errors import InvalidInput, PayloadTooLarge

MAX_STOPS = 4  # as OpenAI
MAX_LOGIT_BIAS = 300


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class SamplingFields(BaseModel):
    """What completions and chat share."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(max_length=256, description="The served model's name (`GET /v1/models`).")
    temperature: float = Field(
        1.0, ge=0, le=2, allow_inf_nan=False, description="0 is greedy; OpenAI's default is 1."
    )
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    n: int = Field(1, description="Choices per request: only 1 is served.")
    stop: str | list[str] | None = Field(
        None, description="Up to 4 strings; the text ends before the first one generated."
    )
    seed: int | None = Field(
        None, ge=0, le=(1 << 63) - 1, description="Varies sampling at temperature > 0."
    )
    logit_bias: dict[str, float] | None = Field(
        None,
        description="Token id (as a string) to a bias in [-100, 100]: token focus of that "
        "strength, up for a positive bias, down for a negative one (the tier must allow focus).",
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=0, le=0, description="Only 0 (not supported).")
    frequency_penalty: float = Field(0.0, ge=0, le=0, description="Only 0 (not supported).")
    user: str | None = Field(None, max_length=256)

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOPS or any(not s for s in stops):
            raise InvalidInput(
                f"`stop`: at most {MAX_STOPS} non-empty strings, got {stops!r}", "stop"
            )
        return stops

    def check_n(self) -> None:
        if self.n != 1:
            raise InvalidInput(f"`n`: only 1 choice per request is served, got {self.n}", "n")


class CompletionRequest(SamplingFields):
    """`POST /v1/completions`."""

    prompt: str | list[str] | list[int] = Field(
        description="One prompt: a string (a list of one string), or token ids."
    )
    max_tokens: int | None = Field(16, ge=1, le=4096, description="OpenAI's default: 16.")
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = Field(False, description="Only false (not supported).")
    suffix: None = Field(None, description="Not supported.")
    best_of: int | None = Field(None, ge=1, le=1, description="Only 1.")


MAX_PROMPT_CHARS = 65_536
"""The longest prompt a request may send, in characters (token ids: as many ids), counted over
every message of a chat: well past any context this service's models take, and checked before
the prompt is tokenized or the chat template applied (the 4 MiB body limit alone lets a request
buy seconds of tokenizer time)."""


def prompt_size(body: CompletionRequest | ChatRequest) -> tuple[int, str]:
    """(size, field): the prompt's characters (or token ids), or the chat's characters in all,
    with the field an over-long prompt is reported against."""
    if isinstance(body, ChatRequest):
        sizes = [_content_size(m.content) for m in body.messages]
        longest = max(range(len(sizes)), key=sizes.__getitem__)
        return sum(sizes), f"messages[{longest}].content"
    prompt = body.prompt
    if isinstance(prompt, str):
        return len(prompt), "prompt"
    return sum(len(p) if isinstance(p, str) else 1 for p in prompt), "prompt"


def _content_size(content: str | list[dict[str, Any]] | None) -> int:
    if content is None or isinstance(content, str):
        return len(content or "")
    return sum(len(str(part.get("text", ""))) for part in content)


def check_prompt_size(body: CompletionRequest | ChatRequest) -> None:
    """413 naming the field when the prompt is longer than `MAX_PROMPT_CHARS`."""
    size, where = prompt_size(body)
    if size > MAX_PROMPT_CHARS:
        raise PayloadTooLarge(
            f"`{where}`: the prompt is {size} characters, over the limit of {MAX_PROMPT_CHARS}",
            where,
        )


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self, where: str) -> str:
        """The content as text (content parts of type `text` joined)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        texts = []
        for i, part in enumerate(self.content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidInput(
                    f"`{where}.content[{i}]`: only text parts are served, got {part.get('type')!r}",
                    f"{where}.content[{i}]",
                )
            texts.append(part["text"])
        return "".join(texts)


class ChatRequest(SamplingFields):
    """`POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


# Answers -----------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def model_list(name: str, created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": created, "owned_by": "aim-serving"}],
    }


class Envelope:
    """The fields every object of one answer shares (id, created, model), and its choices."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat = chat
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = int(time.time())
        self.model = model

    def _object(self, kind: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def whole(self, text: str, finish: str, logprobs: Any, used: dict[str, int]) -> dict[str, Any]:
        """The answer of a request that does not stream."""
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": finish,
            }
            return self._object("chat.completion", [choice], usage=used)
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return self._object("text_completion", [choice], usage=used)

    def chunk(
        self, text: str | None, finish: str | None, logprobs: Any = None, first: bool = False
    ) -> dict[str, Any]:
        """One streamed chunk (chat: the first carries the role, text None means no content)."""
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return self._object("chat.completion.chunk", [choice])
        choice = {"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
        return self._object("text_completion", [choice])

    def usage_chunk(self, used: dict[str, int]) -> dict[str, Any]:
        """The last chunk when `stream_options.include_usage`: no choices, the usage."""
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return self._object(kind, [], usage=used)
