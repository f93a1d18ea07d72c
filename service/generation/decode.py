"""The decode loop: several sequences advance together, one token per step, one KV cache.

Generation is a sequence of decisions, one logit vector per decoding step, so AIM applies to each
step: ``z' = z + σ·ε`` (utility) and ``z'_t += s·λ·|η|`` for focused tokens t, then greedy
(temperature 0) or top-p sampling (:mod:`.sampling`) picks the next token from ``z'``. Keyed noise
is a function of the logit vector, and the logits of a step are a function of the prefix, so the
same request gets the same noise at every step and the same text, whatever its batch-mates.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..models.errors import InputError
from ..modulation import BatchModulation, NoiseSource, focus_field, modulate
from .request import FinishReason, GenerationRequest, GenerationResult, TokenEvent
from .sampling import choose_tokens, sampling_temperature, sampling_top_p

if TYPE_CHECKING:
    from ..models.causal_lm import CausalLM


def generate(
    lm: CausalLM, requests: Sequence[GenerationRequest], source: NoiseSource
) -> list[GenerationResult]:
    """Decode all ``requests`` together to the end; one result per request, in order."""
    batch = DecodeBatch(lm, requests, source)
    while not batch.done:
        batch.step()
    return batch.results()


def stream(
    lm: CausalLM, requests: Sequence[GenerationRequest], source: NoiseSource
) -> Iterator[TokenEvent]:
    """Decode all ``requests`` together, yielding each token as it is produced."""
    return DecodeBatch(lm, requests, source).events()


class DecodeBatch:
    """Several sequences decoded together, one token per :meth:`step`, with one KV cache.

    Prompts are left-padded (positions count real tokens only, as in ``transformers``'
    ``generate``), so every row's next-token logits sit in the last column. Each step runs one
    forward pass over the running rows, one :func:`modulate` call with each row's σ, keyed seed
    and focus field, then greedy or top-p selection per row's temperature. A row finishes at EOS
    (when ``stop_on_eos``) or when its budget is spent, and leaves the cache; :meth:`cancel` ends
    a row between steps (its client went away), so it costs nothing from the next step on.
    """

    def __init__(
        self, lm: CausalLM, requests: Sequence[GenerationRequest], source: NoiseSource
    ) -> None:
        if not requests:
            raise InputError("requests", [], "has to hold at least one request")
        for i, r in enumerate(requests):
            if not isinstance(r, GenerationRequest):
                raise InputError(f"requests[{i}]", r, "has to be a GenerationRequest")
            bad = [t for t in r.prompt_ids if t >= lm.vocab_size]
            if bad:
                raise InputError(
                    "prompt_ids", bad[0], f"has to hold token ids below {lm.vocab_size}"
                )
            if len(r.prompt_ids) + r.max_new_tokens > lm.max_context:
                raise InputError(
                    "max_new_tokens",
                    r.max_new_tokens,
                    f"plus the prompt's {len(r.prompt_ids)} tokens has to fit the model's "
                    f"context of {lm.max_context} tokens",
                )
        self.lm = lm
        self.requests = list(requests)
        self.source = source
        n = len(self.requests)
        device = lm.device
        self._sigma = torch.tensor([r.sigma for r in self.requests], dtype=torch.float32)
        self._seeds = torch.tensor([r.seed for r in self.requests], dtype=torch.int64)
        self._focus = focus_field([r.focus for r in self.requests], lm.vocab_size, device=device)
        temperature = [sampling_temperature(r.temperature) for r in self.requests]
        self._temperature = torch.tensor(temperature, dtype=torch.float32, device=device)
        self._top_p = torch.tensor([sampling_top_p(r.top_p) for r in self.requests])
        self._generators = [
            torch.Generator().manual_seed(r.sampling_seed) if t > 0 else None
            for r, t in zip(self.requests, temperature, strict=True)
        ]
        self._tokens: list[list[int]] = [[] for _ in range(n)]
        self._finish: list[FinishReason | None] = [None] * n
        self._active = torch.arange(n)  # batch rows still running, in cache order
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # A×T attention mask of the cached tokens
        self._positions: torch.Tensor | None = None  # A, position of each row's last token
        self._last: torch.Tensor | None = None  # A, each row's last token
        self.forward_seconds = 0.0
        """Time of the last step's forward pass."""
        self.modulation_seconds = 0.0
        """Time of the last step's modulation and token choice."""

    @property
    def done(self) -> bool:
        """Every row has finished."""
        return self._active.numel() == 0

    @property
    def size(self) -> int:
        return len(self.requests)

    def running(self) -> list[int]:
        """Rows still decoding."""
        return [int(i) for i in self._active]

    def finish_reason(self, row: int) -> FinishReason | None:
        return self._finish[row]

    def cancel(self, row: int) -> None:
        """End ``row`` now (finish reason ``"cancelled"``): it leaves the cache and the next
        step's forward pass. A row that has already finished is left as it is."""
        if not 0 <= row < self.size:
            raise InputError("row", row, f"has to be a row index in [0, {self.size})")
        if self._finish[row] is not None:
            return
        self._finish[row] = "cancelled"
        keep = self._active != row
        if self._cache is None:  # not prefilled yet: nothing cached to cut
            self._active = self._active[keep]
        else:
            self._drop(keep)

    def tokens(self, row: int) -> list[int]:
        """Tokens ``row`` has produced so far (EOS included if it stopped on one)."""
        return list(self._tokens[row])

    def results(self) -> list[GenerationResult]:
        """One result per request, partial (``finish_reason`` None) for rows still running."""
        out = []
        for row, request in enumerate(self.requests):
            ids = self._tokens[row]
            if self._finish[row] == "stop":
                ids = ids[:-1]
            out.append(
                GenerationResult(
                    token_ids=tuple(ids),
                    text=self.lm.decode(ids),
                    finish_reason=self._finish[row],
                    prompt_tokens=len(request.prompt_ids),
                )
            )
        return out

    def events(self) -> Iterator[TokenEvent]:
        """Step to the end, yielding each row's token as soon as its step is done."""
        while not self.done:
            for row, token in enumerate(self.step()):
                if token is not None:
                    yield TokenEvent(row, token, self._finish[row])

    def step(self) -> list[int | None]:
        """Advance every running row by one token; per row the token, or None if it had ended."""
        chosen: list[int | None] = [None] * self.size
        if self.done:
            return chosen
        with torch.inference_mode():
            started = time.perf_counter()
            logits = self._forward()
            if logits.is_cuda:  # kernels run asynchronously: time them, not their launch
                torch.cuda.synchronize(logits.device)
            forwarded = time.perf_counter()
            next_ids = self._select(logits).cpu()
        self.forward_seconds = forwarded - started
        self.modulation_seconds = time.perf_counter() - forwarded
        finished = []
        for slot, (row, token) in enumerate(
            zip(self._active.tolist(), next_ids.tolist(), strict=True)
        ):
            request = self.requests[row]
            self._tokens[row].append(token)
            chosen[row] = token
            if request.stop_on_eos and token in self.lm.eos_token_ids:
                self._finish[row] = "stop"
            elif len(self._tokens[row]) >= request.max_new_tokens:
                self._finish[row] = "length"
            if self._finish[row] is not None:
                finished.append(slot)
        self._last = next_ids.to(self.lm.device)
        if finished:
            keep = torch.ones(self._active.numel(), dtype=torch.bool)
            keep[finished] = False
            self._drop(keep)
        return chosen

    def _forward(self) -> torch.Tensor:
        """Logits A×V (float32) of the next token of every running row."""
        lm, device = self.lm, self.lm.device
        if self._cache is None:  # prefill: left-padded prompts
            prompts = [self.requests[row].prompt_ids for row in self._active.tolist()]
            width = max(len(p) for p in prompts)
            ids = torch.full((len(prompts), width), lm.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(prompts), width), dtype=torch.long)
            for i, p in enumerate(prompts):
                ids[i, width - len(p) :] = torch.tensor(p)
                mask[i, width - len(p) :] = 1
            ids, mask = ids.to(device), mask.to(device)
            positions = (mask.cumsum(dim=1) - 1).clamp_min(0)
        else:
            assert self._mask is not None and self._positions is not None
            assert self._last is not None
            ids = self._last[:, None]
            mask = torch.cat([self._mask, self._mask.new_ones(ids.shape)], dim=1)
            positions = (self._positions + 1)[:, None]
        logits, self._cache = lm.next_logits(ids, mask, positions, self._cache)
        self._mask = mask
        self._positions = positions[:, -1]
        return logits

    def _select(self, logits: torch.Tensor) -> torch.Tensor:
        """Modulate the running rows' logits in one call, then pick each row's next token."""
        active = self._active
        focus = None
        if self._focus is not None:
            focus = self._focus.index_select(0, active.to(self._focus.device))
        params = BatchModulation(
            sigma=self._sigma.index_select(0, active),
            seeds=self._seeds.index_select(0, active),
            focus=focus,
        )
        z = modulate(logits, params, self.source)
        return choose_tokens(
            z,
            self._temperature.index_select(0, active.to(self._temperature.device)),
            self._top_p.index_select(0, active),
            [self._generators[row] for row in active.tolist()],
        )

    def _drop(self, keep: torch.Tensor) -> None:
        """Remove finished rows from the cache and the per-row state."""
        self._active = self._active[keep]
        if self.done:
            self._cache = self._mask = self._positions = self._last = None
            return
        index = keep.nonzero().flatten().to(self.lm.device)
        assert self._mask is not None and self._positions is not None and self._last is not None
        self._mask = self._mask.index_select(0, index)
        self._positions = self._positions.index_select(0, index)
        self._last = self._last.index_select(0, index)
        self._cache = self.lm.select_cache(self._cache, index)
