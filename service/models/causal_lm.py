"""Causal LM adapter: a local Hugging Face directory behind the few calls serving needs.

The adapter loads model and tokenizer without network, names the model (fingerprint), turns text
into token ids and back, resolves focus tokens, and runs one forward step over a left-padded batch
with a KV cache (:meth:`CausalLM.next_logits`), hiding how ``transformers`` names its arguments
and caches. Decoding itself (the batch, sampling, the scheduler) lives in
:mod:`service.generation`; calibration (teacher-forced steps as decisions, shortlisted logits) in
``service/calibration_data.py``.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..modulation import FocusEntry
from .device import resolve_device
from .errors import InputError, ModelLoadError, describe_value

CALIBRATION_FILE = "calibration.txt"
"""Unlabeled text in a model directory, one sample a line, that `utility` tiers calibrate on."""
HELDOUT_FILE = "heldout.txt"
"""Evaluation text in a model directory, one sample a line; never used for calibration."""
DEFAULT_CALIBRATION_TOKENS = 1024
_WORD_MARKERS = ("Ġ", "▁")  # byte-level BPE (GPT-2, Llama 3) and SentencePiece word starts
_FINGERPRINT_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".tiktoken")
_FINGERPRINT_NAMES = ("vocab.txt", "merges.txt")


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

    # Decoding steps -----------------------------------------------------------------------------

    def next_logits(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any = None,
    ) -> tuple[torch.Tensor, Any]:
        """One forward step: the float32 logits (A×V) of each row's next token, and the cache.

        ``ids`` are the new tokens (A×N, left-padded at prefill), ``mask`` the attention mask of
        everything cached plus ``ids`` (A×T), ``positions`` the position ids of ``ids`` (A×N).
        ``cache`` is what the previous step returned (None at prefill).
        """
        kwargs: dict[str, Any] = {"use_cache": True}
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        if cache is not None:
            kwargs[self._cache_arg] = cache
        if self._takes_positions:
            kwargs["position_ids"] = positions
        out = self.model(input_ids=ids, attention_mask=mask, **kwargs)
        new_cache = out.get("cache")
        if new_cache is None:
            new_cache = out.get("past_key_values")
        return out.logits[:, -1, :].float(), new_cache

    @staticmethod
    def select_cache(cache: Any, index: torch.Tensor) -> Any:
        """Keep the rows ``index`` of a KV cache (a ``transformers`` Cache or legacy tuples)."""
        if hasattr(cache, "batch_select_indices"):
            cache.batch_select_indices(index)
            return cache
        return tuple(tuple(t.index_select(0, index) for t in layer) for layer in cache)

    @staticmethod
    def cache_merges(cache: Any) -> bool:
        """Whether rows can join ``cache`` by left-padding (continuous batching): plain
        key/value layers (or legacy tuples) only; sliding-window, linear-attention or quantised
        layers keep state that padding does not describe."""
        layers = getattr(cache, "layers", None)
        if layers is None:
            return isinstance(cache, tuple)
        from transformers.cache_utils import DynamicLayer

        return all(type(layer) is DynamicLayer for layer in layers)

    @staticmethod
    def merge_caches(first: Any, second: Any) -> Any:
        """One cache holding the rows of ``first`` then those of ``second``, the shorter
        left-padded with zeros to the longer's length (the attention mask hides the padding)."""
        if hasattr(first, "layers"):
            for a, b in zip(first.layers, second.layers, strict=True):
                a.keys = _cat_padded(a.keys, b.keys)
                a.values = _cat_padded(a.values, b.values)
            return first
        return tuple(
            tuple(_cat_padded(x, y) for x, y in zip(la, lb, strict=True))
            for la, lb in zip(first, second, strict=True)
        )

    @staticmethod
    def trim_cache(cache: Any, start: int) -> Any:
        """Drop the first ``start`` positions of every row (padding that no row attends to)."""
        if hasattr(cache, "layers"):
            for layer in cache.layers:
                layer.keys = layer.keys[..., start:, :]
                layer.values = layer.values[..., start:, :]
            return cache
        return tuple(tuple(t[..., start:, :] for t in layer) for layer in cache)


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


def _cat_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` then ``b`` (rows × heads × positions × dim), left-padded to one length."""
    width = max(a.shape[-2], b.shape[-2])
    pad = [torch.nn.functional.pad(t, (0, 0, width - t.shape[-2], 0)) for t in (a, b)]
    return torch.cat(pad)


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
