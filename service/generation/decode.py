"""The decode loop: several sequences advance together, one token per step, one KV cache.

Generation is a sequence of decisions, one logit vector per decoding step, so AIM applies to each
step: ``z' = z + σ·ε`` (utility) and ``z'_t += s·λ·|η|`` for focused tokens t, then greedy
(temperature 0) or top-p sampling (:mod:`.sampling`) picks the next token from ``z'``. Keyed noise
is a function of the logit vector, and the logits of a step are a function of the prefix, so the
same request gets the same noise at every step and the same text, whatever its batch-mates.

Rows may join a running batch (:meth:`DecodeBatch.add`, continuous batching): at the next step
they are prefilled on their own and their cache is merged into the running one, both left-padded
to one width; rows that end leave the cache, and padding no row needs any more is cut.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

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


class _Rows(NamedTuple):
    """The knobs of the rows in the cache, in cache order (rebuilt when rows join or leave)."""

    sigma: torch.Tensor
    seeds: torch.Tensor
    focus: torch.Tensor | None
    temperature: torch.Tensor
    top_p: torch.Tensor
    generators: list[torch.Generator | None]


class DecodeBatch:
    """Several sequences decoded together, one token per :meth:`step`, with one KV cache.

    Prompts are left-padded (positions count real tokens only, as in ``transformers``'
    ``generate``), so every row's next-token logits sit in the last column. Each step runs one
    forward pass over the running rows (and one prefill for rows that joined), one
    :func:`modulate` call with each row's σ, keyed seed and focus field, then greedy or top-p
    selection per row's temperature. A row finishes at EOS (when ``stop_on_eos``) or when its
    budget is spent, and leaves the cache; :meth:`cancel` ends a row between steps (its client
    went away), so it costs nothing from the next step on.
    """

    def __init__(
        self, lm: CausalLM, requests: Sequence[GenerationRequest], source: NoiseSource
    ) -> None:
        if not requests:
            raise InputError("requests", [], "has to hold at least one request")
        self.lm = lm
        self.source = source
        self.requests: list[GenerationRequest] = []
        self._generators: list[torch.Generator | None] = []
        self._tokens: list[list[int]] = []
        self._finish: list[FinishReason | None] = []
        self._active = torch.zeros(0, dtype=torch.long)  # rows in the cache, in cache order
        self._joining: list[int] = []  # rows added and not prefilled yet
        self._rows: _Rows | None = None
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # A×T attention mask of the cached tokens
        self._positions: torch.Tensor | None = None  # A, position of each row's last token
        self._last: torch.Tensor | None = None  # A, each row's last token
        self.forward_seconds = 0.0
        """Time of the last step's forward passes."""
        self.modulation_seconds = 0.0
        """Time of the last step's modulation and token choice."""
        self.add(requests)

    def add(self, requests: Sequence[GenerationRequest]) -> list[int]:
        """Rows for ``requests``, which join at the next step. Refuses all of them (an
        :class:`InputError` naming the field) if one is malformed or does not fit the context."""
        if not self.can_join:
            raise InputError(
                "requests", len(requests), "cannot join: this model's KV cache does not merge"
            )
        for i, r in enumerate(requests):
            self._check(i, r)
        rows = list(range(len(self.requests), len(self.requests) + len(requests)))
        for r in requests:
            self.requests.append(r)
            sampled = sampling_temperature(r.temperature) > 0
            self._generators.append(
                torch.Generator().manual_seed(r.sampling_seed) if sampled else None
            )
            self._tokens.append([])
            self._finish.append(None)
        self._joining += rows
        return rows

    def _check(self, i: int, r: GenerationRequest) -> None:
        lm = self.lm
        if not isinstance(r, GenerationRequest):
            raise InputError(f"requests[{i}]", r, "has to be a GenerationRequest")
        bad = [t for t in r.prompt_ids if t >= lm.vocab_size]
        if bad:
            raise InputError("prompt_ids", bad[0], f"has to hold token ids below {lm.vocab_size}")
        if len(r.prompt_ids) + r.max_new_tokens > lm.max_context:
            raise InputError(
                "max_new_tokens",
                r.max_new_tokens,
                f"plus the prompt's {len(r.prompt_ids)} tokens has to fit the model's "
                f"context of {lm.max_context} tokens",
            )

    @property
    def done(self) -> bool:
        """Every row has finished."""
        return self._active.numel() == 0 and not self._joining

    @property
    def size(self) -> int:
        return len(self.requests)

    @property
    def width(self) -> int:
        """Tokens per row in the cache (the longest row, padding included)."""
        return 0 if self._mask is None else int(self._mask.shape[1])

    def running(self) -> list[int]:
        """Rows still decoding (those in the cache, then those about to join)."""
        return [*self._active.tolist(), *self._joining]

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
        if row in self._joining:  # not prefilled yet: nothing cached to cut
            self._joining.remove(row)
        else:
            self._drop(self._active != row)

    def cancel_all(self) -> None:
        """End every running row (after a failed step: the cache is not trusted any more)."""
        for row in self.running():
            self._finish[row] = "cancelled"
        self._active = torch.zeros(0, dtype=torch.long)
        self._joining = []
        self._rows = None
        self._cache = self._mask = self._positions = self._last = None

    @property
    def can_join(self) -> bool:
        """New rows may :meth:`add` into the running batch (the model's cache merges)."""
        return self._cache is None or self.lm.cache_merges(self._cache)

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
        """Logits A×V (float32) of the next token of every row in the cache, joiners last."""
        parts = []
        if self._active.numel():
            assert self._mask is not None and self._positions is not None
            assert self._last is not None
            ids = self._last[:, None]
            mask = torch.cat([self._mask, self._mask.new_ones(ids.shape)], dim=1)
            positions = self._positions + 1
            logits, self._cache = self.lm.next_logits(ids, mask, positions[:, None], self._cache)
            self._mask, self._positions = mask, positions
            parts.append(logits)
        if self._joining:
            parts.append(self._prefill(self._joining))
            self._joining = []
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _prefill(self, rows: list[int]) -> torch.Tensor:
        """Run the left-padded prompts of ``rows`` and merge their cache into the batch's."""
        device = self.lm.device
        prompts = [self.requests[row].prompt_ids for row in rows]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.lm.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(dim=1) - 1).clamp_min(0)
        logits, cache = self.lm.next_logits(ids, mask, positions, None)
        new_rows = torch.tensor(rows, dtype=torch.long)
        if self._cache is None:
            self._cache, self._mask, self._active = cache, mask, new_rows
            self._positions = positions[:, -1]
        else:
            assert self._mask is not None and self._positions is not None
            self._cache = self.lm.merge_caches(self._cache, cache)
            width = max(self.width, int(mask.shape[1]))
            self._mask = torch.cat([_pad_left(self._mask, width), _pad_left(mask, width)])
            self._positions = torch.cat([self._positions, positions[:, -1]])
            self._active = torch.cat([self._active, new_rows])
        self._rows = None
        return logits

    def _select(self, logits: torch.Tensor) -> torch.Tensor:
        """Modulate the running rows' logits in one call, then pick each row's next token."""
        rows = self._row_knobs()
        params = BatchModulation(sigma=rows.sigma, seeds=rows.seeds, focus=rows.focus)
        z = modulate(logits, params, self.source)
        return choose_tokens(z, rows.temperature, rows.top_p, rows.generators)

    def _row_knobs(self) -> _Rows:
        if self._rows is None:
            requests = [self.requests[row] for row in self._active.tolist()]
            device = self.lm.device
            self._rows = _Rows(
                sigma=torch.tensor([r.sigma for r in requests], dtype=torch.float32),
                seeds=torch.tensor([r.seed for r in requests], dtype=torch.int64),
                focus=focus_field([r.focus for r in requests], self.lm.vocab_size, device=device),
                temperature=torch.tensor(
                    [sampling_temperature(r.temperature) for r in requests], device=device
                ),
                top_p=torch.tensor([sampling_top_p(r.top_p) for r in requests]),
                generators=[self._generators[row] for row in self._active.tolist()],
            )
        return self._rows

    def _drop(self, keep: torch.Tensor) -> None:
        """Remove ended rows from the cache and the per-row state, then padding nobody needs."""
        self._active = self._active[keep]
        self._rows = None
        if self._active.numel() == 0:
            self._cache = self._mask = self._positions = self._last = None
            return
        index = keep.nonzero().flatten().to(self.lm.device)
        assert self._mask is not None and self._positions is not None and self._last is not None
        self._mask = self._mask.index_select(0, index)
        self._positions = self._positions.index_select(0, index)
        self._last = self._last.index_select(0, index)
        self._cache = self.lm.select_cache(self._cache, index)
        start = int(self._mask.any(dim=0).to(torch.int8).argmax())  # the first column in use
        if start > 0:
            self._mask = self._mask[:, start:]
            self._cache = self.lm.trim_cache(self._cache, start)


def _pad_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(mask, (width - int(mask.shape[1]), 0))
