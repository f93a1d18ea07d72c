"""Causal LM adapter: a local Hugging Face directory, decoded in batches with modulation per step.

Generation is a sequence of decisions, one logit vector per decoding step, so AIM applies to each
step: ``z' = z + σ·ε`` (utility) and ``z'_t += s·λ·|η|`` for focused tokens t, then greedy
(temperature 0) or top-p sampling picks the next token from ``z'``. Keyed noise is a function of
the logit vector, and the logits of a step are a function of the prefix, so the same request
gets the same noise at every step and the same text.

:class:`DecodeBatch` holds several sequences (left-padded prompts, one KV cache) and advances them
one token per :meth:`DecodeBatch.step`: a single forward pass and a single :func:`modulate` call
for all running rows, each row with its own σ, keyed seed, focus field, temperature, top-p and
token budget. Rows that finish (EOS or budget) are dropped from the cache, and so is a row that
:meth:`DecodeBatch.cancel` ends (its client went away). :meth:`CausalLM.generate` runs a batch to
completion and :meth:`CausalLM.stream` yields :class:`TokenEvent` s as they come.

Calibration (teacher-forced steps as decisions, shortlisted logits) lives in
``service/calibration.py``; this adapter only gives it the model and tokenizer.
"""

from __future__ import annotations

import hashlib
import inspect
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch

from ..modulation import (
    BatchModulation,
    FocusEntry,
    NoiseSource,
    focus_field,
    modulate,
)
from .device import resolve_device
from .errors import InputError, ModelLoadError, describe_value

FinishReason = Literal["stop", "length", "cancelled"]
CALIBRATION_FILE = "calibration.txt"
"""Unlabeled text in a model directory, one sample a line, that `utility` tiers calibrate on."""
HELDOUT_FILE = "heldout.txt"
"""Evaluation text in a model directory, one sample a line; never used for calibration."""
DEFAULT_CALIBRATION_TOKENS = 1024
_MAX_SEED = (1 << 63) - 1
_WORD_MARKERS = ("Ġ", "▁")  # byte-level BPE (GPT-2, Llama 3) and SentencePiece word starts
_FINGERPRINT_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".tiktoken")
_FINGERPRINT_NAMES = ("vocab.txt", "merges.txt")


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
    """Keyed-noise seed of the (key, tier) pair, ``KeyedNoise.row_seed``; ignored by fresh noise."""
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
        _check_int("max_new_tokens", self.max_new_tokens, 1, None)
        _check_float("temperature", self.temperature, low=0.0)
        _check_float("top_p", self.top_p, low=0.0, low_open=True, high=1.0)
        _check_float("sigma", self.sigma, low=0.0)
        _check_int("seed", self.seed, 0, _MAX_SEED)
        _check_int("sampling_seed", self.sampling_seed, 0, _MAX_SEED)


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


def _check_int(field: str, value: Any, low: int, high: int | None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if not ok or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise InputError(
            field, value, f"has to be an integer {bound}, but is {describe_value(value)}"
        )


def _check_float(
    field: str, value: Any, low: float, low_open: bool = False, high: float | None = None
) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    number = float(value) if ok else float("nan")
    ok = ok and number == number and abs(number) != float("inf")
    ok = ok and (number > low if low_open else number >= low)
    ok = ok and (high is None or number <= high)
    if not ok:
        lo = "(" if low_open else "["
        bound = f"in {lo}{low}, {high}]" if high is not None else f">= {low}"
        raise InputError(
            field, value, f"has to be a number {bound}, but is {describe_value(value)}"
        )


class CausalLM:
    """A causal LM and its tokenizer from a local Hugging Face directory (never the hub)."""

    task = "generation"

    def __init__(self, model: Any, tokenizer: Any, path: Path, device: torch.device) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self.name = path.name
        self.device = device
        config = model.config
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        """Width of the logits (may exceed the tokenizer's size when embeddings are padded)."""
        self.max_context = _max_context(config, tokenizer)
        """Most tokens (prompt + generated) one sequence may hold."""
        self.eos_token_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else min(self.eos_token_ids, default=0))
        params = inspect.signature(model.forward).parameters
        self._takes_positions = "position_ids" in params
        self._logits_to_keep = "logits_to_keep" in params
        # transformers 5.2x renamed `past_key_values` to `cache` (the old name goes in 5.40).
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._fingerprint: str | None = None
        self.calibration_file: Path = path / CALIBRATION_FILE
        """Text that `utility` tiers are calibrated on (model spec option ``calibration_text``)."""
        self.heldout_file: Path = path / HELDOUT_FILE
        """Text that ``aim eval`` measures on."""
        self.calibration_tokens = DEFAULT_CALIBRATION_TOKENS
        """Most teacher-forced steps (decisions) to calibrate on (option ``calibration_tokens``)."""

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> CausalLM:
        """Load model and tokenizer from ``path`` with ``local_files_only`` (no network).

        ``device`` is ``"cpu"``, ``"cuda"``, ``"auto"`` (CUDA when present) or a torch device.
        Raises :class:`ModelLoadError` naming the directory and the problem.
        """
        directory = Path(path)
        kind = "causal LM directory"
        if not directory.exists():
            raise ModelLoadError(str(directory), "the directory does not exist", kind)
        if not directory.is_dir():
            raise ModelLoadError(str(directory), "is a file, not a directory", kind)
        if not (directory / "config.json").is_file():
            raise ModelLoadError(
                str(directory), "no config.json: not a Hugging Face model directory", kind
            )
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise ModelLoadError(
                str(directory), "generation needs the 'llm' extra (transformers, tokenizers)", kind
            ) from exc
        target = resolve_device(device)
        options: dict[str, Any] = {"local_files_only": True}
        if dtype is not None:
            options["dtype"] = dtype
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
            model: Any = AutoModelForCausalLM.from_pretrained(directory, **options)
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ...
            raise ModelLoadError(str(directory), f"{type(exc).__name__}: {exc}", kind) from exc
        model.to(target).eval()
        return cls(model, tokenizer, directory, target)

    # Identity -----------------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """SHA-256 over the names and bytes of the model's config, weight and tokenizer files.

        Keys the calibration cache: it changes when weights or tokenizer change. Computed once.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            for file in sorted(self.path.iterdir()):
                if not file.is_file():
                    continue
                if not (file.suffix in _FINGERPRINT_SUFFIXES or file.name in _FINGERPRINT_NAMES):
                    continue
                h.update(file.name.encode() + b"\x00")
                with file.open("rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def warmup(self) -> None:
        """One short decoding step, so the first request does not pay for lazy initialisation."""
        with torch.inference_mode():
            ids = torch.tensor([self.encode("warm up")[: self.max_context]], device=self.device)
            self.model(input_ids=ids, use_cache=False)

    # Tokens -------------------------------------------------------------------------------------

    def encode(self, prompt: str) -> list[int]:
        """Token ids of ``prompt``, with the special tokens the tokenizer adds (e.g. BOS)."""
        return [int(i) for i in self.tokenizer(prompt)["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens skipped."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def token_id(self, token: str | int) -> int:
        """The id of one token, named by its id or by its text.

        A string is looked up in this order: a vocabulary entry written with its word-start
        marker (``Ġcat``, ``▁cat``); the word as it appears inside running text (``" cat"``);
        the bare string (``"cat"``); the raw vocabulary entries ``cat``, ``Ġcat``, ``▁cat``. The
        first form that is exactly one token wins. Raises :class:`InputError` (a ``ValueError``)
        naming the token when none is.
        """
        if isinstance(token, bool) or not isinstance(token, int | str):
            raise InputError("token", token, "has to be a token id or a token string")
        if isinstance(token, int):
            if not 0 <= token < self.vocab_size:
                raise InputError(
                    "token",
                    token,
                    f"has to be a token id in [0, {self.vocab_size}), but is {token}",
                )
            return token
        if not token:
            raise InputError("token", token, "has to be a non-empty string")
        vocab: dict[str, int] = self.tokenizer.get_vocab()
        if token.startswith(_WORD_MARKERS) and token in vocab:
            return vocab[token]
        for text in (" " + token.lstrip(" "), token):
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                return int(ids[0])
        for raw in (token, *(m + token for m in _WORD_MARKERS)):
            if raw in vocab:
                return vocab[raw]
        parts = len(self.tokenizer(token, add_special_tokens=False)["input_ids"])
        raise InputError(
            "token",
            token,
            f"has to be a single token of this model's vocabulary, but {describe_value(token)} "
            f"is {parts} tokens",
        )

    def focus_entry(self, token: str | int, direction: str | int, strength: float) -> FocusEntry:
        """A focus entry on one token (``direction`` ``"up"``/``"down"`` or ±1)."""
        return FocusEntry.parse(self.token_id(token), direction, strength)

    def request(self, prompt: str, **knobs: Any) -> GenerationRequest:
        """A :class:`GenerationRequest` for a text prompt; ``knobs`` are its other fields."""
        return GenerationRequest(prompt_ids=tuple(self.encode(prompt)), **knobs)

    # Generation ---------------------------------------------------------------------------------

    def start(self, requests: Sequence[GenerationRequest], source: NoiseSource) -> DecodeBatch:
        """A :class:`DecodeBatch` over ``requests``; nothing runs until its first step."""
        return DecodeBatch(self, requests, source)

    def generate(
        self, requests: Sequence[GenerationRequest], source: NoiseSource
    ) -> list[GenerationResult]:
        """Decode all ``requests`` together to the end; one result per request, in order."""
        batch = DecodeBatch(self, requests, source)
        while not batch.done:
            batch.step()
        return batch.results()

    def stream(
        self, requests: Sequence[GenerationRequest], source: NoiseSource
    ) -> Iterator[TokenEvent]:
        """Decode all ``requests`` together, yielding each token as it is produced."""
        return DecodeBatch(self, requests, source).events()


def read_texts(path: str | Path, kind: str = "text file") -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped; :class:`ModelLoadError` names the
    file when it is missing, unreadable or empty."""
    file = Path(path)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise ModelLoadError(str(file), "file not found", kind) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(str(file), f"{type(exc).__name__}: {exc}", kind) from exc
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise ModelLoadError(str(file), "holds no text (one sample per line)", kind)
    return texts


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
        self._temperature = torch.tensor(
            [r.temperature for r in self.requests], dtype=torch.float32, device=device
        )
        self._top_p = torch.tensor([r.top_p for r in self.requests], dtype=torch.float32)
        self._generators = [
            torch.Generator().manual_seed(r.sampling_seed) if r.temperature > 0 else None
            for r in self.requests
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
        kwargs: dict[str, Any] = {"use_cache": True}
        if lm._logits_to_keep:
            kwargs["logits_to_keep"] = 1
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
            kwargs[lm._cache_arg] = self._cache
        if lm._takes_positions:
            kwargs["position_ids"] = positions
        out = lm.model(input_ids=ids, attention_mask=mask, **kwargs)
        cache = out.get("cache")
        self._cache = cache if cache is not None else out.get("past_key_values")
        self._mask = mask
        self._positions = positions[:, -1]
        return out.logits[:, -1, :].float()

    def _select(self, logits: torch.Tensor) -> torch.Tensor:
        """Modulate the running rows' logits in one call, then pick greedy or top-p per row."""
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
        choice = z.argmax(dim=1)
        temperature = self._temperature.index_select(0, active.to(z.device))
        sampled = (temperature > 0).nonzero().flatten()
        if sampled.numel() == 0:
            return choice
        rows = active.index_select(0, sampled.cpu())
        probs = torch.softmax(z.index_select(0, sampled) / temperature[sampled, None], dim=1)
        sorted_probs, order = probs.sort(dim=1, descending=True)
        top_p = self._top_p.index_select(0, rows).to(z.device)
        # Keep a token while the mass before it is below top_p: the first token always stays.
        keep = (sorted_probs.cumsum(dim=1) - sorted_probs) < top_p[:, None]
        cdf = (sorted_probs * keep).cumsum(dim=1)
        # One uniform per sampled row from the row's own generator: the text of a request does
        # not depend on the other rows of its batch.
        uniform = torch.stack(
            [torch.rand((), generator=self._generators[r]) for r in rows.tolist()]
        ).to(z.device)
        pick = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True)
        pick = pick.clamp_(max=cdf.shape[1] - 1)
        choice[sampled] = order.gather(1, pick).flatten()
        return choice

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
        self._cache = _select_cache(self._cache, index)


def _select_cache(cache: Any, index: torch.Tensor) -> Any:
    """Keep the rows ``index`` of a KV cache (a ``transformers`` Cache or legacy tuples)."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(index)
        return cache
    return tuple(tuple(t.index_select(0, index) for t in layer) for layer in cache)


def _max_context(config: Any, tokenizer: Any) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    length = getattr(tokenizer, "model_max_length", None)
    if isinstance(length, int) and 0 < length < 1_000_000:
        return length
    return 2048


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    generation = getattr(model, "generation_config", None)
    for value in (getattr(generation, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)
