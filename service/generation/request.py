"""What one generation request asks for and what it gets back: the types the decode loop, the
scheduler and the routes share.

The knobs are checked eagerly, each refusal an :class:`InputError` naming the field and the bad
value, so a request that reaches the decode loop cannot fail it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

from ..models.errors import InputError, check_float, check_int
from ..modulation import FocusEntry

FinishReason = Literal["stop", "length", "cancelled"]
MAX_SEED = (1 << 63) - 1


class Encoder(Protocol):
    def encode(self, prompt: str) -> list[int]: ...


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate, with its own modulation and sampling knobs."""

    prompt_ids: tuple[int, ...]
    """Prompt token ids, as :meth:`CausalLM.encode` gives them (BOS included when the model uses
    one); at least one token."""
    max_new_tokens: int = 32
    """Token budget, ≥ 1; an EOS token counts towards it."""
    temperature: float = 0.0
    """0 picks the arg-max of the modulated logits (greedy); > 0 samples from softmax(z'/T)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches ``top_p``."""
    sigma: float = 0.0
    """Utility noise σ of the tier, ≥ 0; 0 with no focus leaves the logits exact."""
    seed: int = 0
    """Keyed-noise seed of the tier, ``KeyedNoise.tier_seed``; ignored by fresh noise."""
    focus: tuple[FocusEntry, ...] = ()
    """Token focus: ``class_index`` is a token id (see :meth:`CausalLM.focus_entry`)."""
    sampling_seed: int = 0
    """Seed of this request's own ``torch.Generator`` for sampling: same request, same text."""
    stop_on_eos: bool = True
    """End the sequence at the model's EOS token (the EOS is not part of the text)."""

    def __post_init__(self) -> None:
        ids = tuple(self.prompt_ids)
        object.__setattr__(self, "prompt_ids", ids)
        object.__setattr__(self, "focus", tuple(self.focus))
        if not ids:
            raise InputError("prompt", ids, "has to hold at least one token")
        if not all(isinstance(e, FocusEntry) for e in self.focus):
            raise InputError("focus", self.focus, "has to hold FocusEntry values")
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise InputError("prompt_ids", ids, "has to hold non-negative integer token ids")
        check_int("max_new_tokens", self.max_new_tokens, 1, None)
        check_float("temperature", self.temperature, low=0.0)
        check_float("top_p", self.top_p, low=0.0, low_open=True, high=1.0)
        check_float("sigma", self.sigma, low=0.0)
        check_int("seed", self.seed, 0, MAX_SEED)
        check_int("sampling_seed", self.sampling_seed, 0, MAX_SEED)

    @classmethod
    def for_prompt(cls, lm: Encoder, prompt: str, **knobs: Any) -> GenerationRequest:
        """A request for a text prompt, encoded by ``lm``; ``knobs`` are the other fields."""
        return cls(prompt_ids=tuple(lm.encode(prompt)), **knobs)


@dataclass(frozen=True)
class GenerationResult:
    """What one request produced."""

    token_ids: tuple[int, ...]
    """Generated ids, without the prompt and without the final EOS."""
    text: str
    """``token_ids`` decoded, special tokens skipped."""
    finish_reason: FinishReason | None
    """``"stop"`` (EOS), ``"length"`` (budget spent), ``"cancelled"`` (:meth:`DecodeBatch.cancel`),
    or None while still running."""
    prompt_tokens: int


class TokenEvent(NamedTuple):
    """One token of one row, in the order the batch produced them (for streaming)."""

    row: int
    """Index of the request in the batch."""
    token_id: int
    """The token chosen; with ``finish_reason == "stop"`` it is the EOS and not part of the text."""
    finish_reason: FinishReason | None
    """Set on the row's last event only."""
