"""What each model kind calibrates on: a ``CalibrationSet`` (the cache key's inputs and the
logits, computed on demand).

A vision model calibrates on its unlabeled calibration inputs (the shipped models' split; a user
model's ``calibration:`` folder of images, else it takes raw `sigma` tiers), a generation model on
the teacher-forced steps of its calibration text, each step cut to a shortlist of its largest
logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import TierConfig
from ..models.errors import InputError, describe_value
from ..modulation import expected_agreement, sigma_for_agreement

# Part of a generation model's cache key: how its step logits are shortlisted.
SHORTLIST_METHOD = "shortlist-v1"


@dataclass(frozen=True)
class CalibrationSet:
    """What one model calibrates on: what keys the cache, and the logits, computed on demand
    (only when some target misses the cache)."""

    fingerprint: str
    """The model's files (``adapter.fingerprint()``)."""
    inputs: torch.Tensor | None
    """What picks the calibration decisions besides the model; None when the model has no
    calibration data (then only raw `sigma` and `utility: 1.0` tiers can be served)."""
    logits: Callable[[], torch.Tensor] | None
    """Decisions × classes logits of the calibration inputs; None without calibration data."""
    served: bool = False
    """Calibrate on the keyed noise actually served (vision models: the logits are the model's
    own, cheap to recompute, so a cached σ is also checked against its target)."""


def calibration_set(
    adapter: Any,
    model: str | dict[str, Any],
    tiers: Sequence[TierConfig],
    images: Path | None = None,
) -> CalibrationSet:
    """What ``adapter`` calibrates on, by model kind (``model`` is the config's model entry,
    ``images`` the spec's ``calibration:`` folder)."""
    if adapter.task == "generation":
        return generation_calibration(adapter, [t.utility for t in tiers if t.utility is not None])
    return vision_calibration(adapter, model, images)


def vision_calibration(
    adapter: Any, model: str | dict[str, Any], images: Path | None = None
) -> CalibrationSet:
    """A shipped vision model calibrates on its unlabeled calibration split, a user model on its
    folder of calibration images (decoded as requests are: the model's own resize and crop);
    without one it has no calibration data."""
    from ..models import calibration_inputs
    from ..models.shipped import SHIPPED

    if isinstance(model, str) and model in SHIPPED:
        inputs = calibration_inputs(model)
    elif images is not None:
        inputs = image_folder_inputs(images, adapter)
    else:
        return CalibrationSet(adapter.fingerprint(), None, None)

    def logits() -> torch.Tensor:
        return adapter.forward(inputs.to(adapter.device)).cpu()

    return CalibrationSet(adapter.fingerprint(), inputs, logits, served=True)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def image_folder_inputs(folder: Path, adapter: Any) -> torch.Tensor:
    """The PNG/JPEG images of ``folder`` (sorted by name) as the network's inputs; InputError
    names the folder when it has none, or the file that does not decode."""
    if not folder.is_dir():
        raise InputError("model.calibration", str(folder), "is not a folder of images")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError("model.calibration", str(folder), "has no .png/.jpg/.jpeg images")
    arrays = []
    for file in files:
        try:
            arrays.append(adapter.decode_image_sized(file.read_bytes())[0])
        except (InputError, OSError) as exc:
            reason = exc.reason if isinstance(exc, InputError) else str(exc)
            raise InputError("model.calibration", str(file), f"{file.name}: {reason}") from None
    return torch.from_numpy(np.stack(arrays))


def generation_calibration(lm: Any, targets: Sequence[float]) -> CalibrationSet:
    """The teacher-forced steps of the model's calibration text (read only when a target below 1
    needs it), keyed by the text and the step budget."""
    from ..models import read_texts

    if not any(t < 1.0 for t in targets):
        return CalibrationSet(lm.fingerprint(), None, None)
    texts = read_texts(lm.calibration_file, "calibration text")
    return CalibrationSet(
        lm.fingerprint(),
        generation_key(lm, texts),
        lambda: generation_logits(lm, texts, targets),
    )


def generation_key(lm: Any, texts: Sequence[str]) -> torch.Tensor:
    """What picks a generation model's calibration decisions besides its files: the texts and
    the step budget, as a byte tensor (hashed into the cache key by :func:`calibration_key`),
    so a cached σ is found without running the model."""
    data = f"{SHORTLIST_METHOD}\x00{lm.calibration_tokens}\x00" + "\n".join(texts)
    return torch.frombuffer(bytearray(data.encode("utf-8")), dtype=torch.uint8)


def generation_logits(lm: Any, texts: Sequence[str], targets: Sequence[float]) -> torch.Tensor:
    """Step logits to calibrate σ on: the teacher-forced steps of ``texts`` (at most
    ``lm.calibration_tokens``), each cut to a shortlist of its largest logits that is long
    enough for the lowest of ``targets`` (:func:`shortlist_logits`), on the model's device."""
    logits, _ = teacher_forced_logits(lm, texts, max_tokens=lm.calibration_tokens)
    logits = logits.to(lm.device)  # on a GPU the quadrature is much faster
    lowest = min((float(t) for t in targets), default=1.0)
    if lowest >= 1.0:
        return logits
    # A target at or below chance among K logits has no σ there: start above 2/target.
    start = max(32, 1 << math.ceil(math.log2(2.0 / lowest)))
    # The σ found on the shortest list bounds the lowest target's σ from above (fewer
    # competitors, more agreement), so a shortlist converged at it is long enough.
    return shortlist_logits(logits, lambda short: sigma_for_agreement(short, lowest), start=start)


def _positive(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(field, value, f"has to be an integer >= 1, but is {describe_value(value)}")


def teacher_forced_logits(
    lm: Any,
    texts: Sequence[str],
    max_tokens: int = 4096,
    batch_size: int = 16,
    append_eos: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of every decoding step of ``texts`` under teacher forcing, and the true tokens.

    Each text is encoded like a prompt (BOS included), followed by EOS when ``append_eos``
    (ending a text is a decision too), and cut to ``lm.max_context`` tokens. Step i of a text is
    the logit vector after its first i + 1 tokens, labelled with token i + 1. Returns float32
    logits D×V and int64 labels D on the CPU, D ≤ ``max_tokens`` (texts are used in order until
    the budget is spent). Memory is D·V floats: mind large vocabularies.
    """
    _positive("max_tokens", max_tokens)
    _positive("batch_size", batch_size)
    eos = min(lm.eos_token_ids) if lm.eos_token_ids else None
    sequences: list[list[int]] = []
    total = 0
    for text in texts:
        ids = lm.encode(text) + ([eos] if append_eos and eos is not None else [])
        ids = ids[: lm.max_context]
        if len(ids) < 2:
            continue
        sequences.append(ids)
        total += len(ids) - 1
        if total >= max_tokens:
            break
    chunks: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, len(sequences), batch_size):
            rows = sequences[start : start + batch_size]
            width = max(len(r) for r in rows)
            batch = torch.full((len(rows), width), lm.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):  # right padding: causal steps never see it
                batch[i, : len(r)] = torch.tensor(r)
                mask[i, : len(r)] = 1
            out = lm.model(input_ids=batch.to(lm.device), attention_mask=mask.to(lm.device))
            valid = mask[:, 1:].bool()
            chunks.append(out.logits[:, :-1].float().cpu()[valid])
            labels.append(batch[:, 1:][valid])
    if not chunks:
        raise InputError("texts", list(texts)[:3], "has to hold text of at least one token")
    return torch.cat(chunks)[:max_tokens], torch.cat(labels)[:max_tokens]


def shortlist_logits(
    logits: torch.Tensor,
    sigma: float | Callable[[torch.Tensor], float],
    tolerance: float = 1e-3,
    start: int = 32,
) -> torch.Tensor:
    """Each step's K largest logits, in descending order: enough to predict agreement at σ.

    The quadrature behind ``expected_agreement`` costs D·V·48 evaluations per σ, too much for a
    vocabulary of 10⁵ tokens. A token far below the top hardly ever overtakes it, so the
    prediction on the top K logits converges to the one on all V as K grows (from above: fewer
    competitors, more agreement). K starts at ``start`` and doubles until the predictions on K
    and on 2K logits differ by at most ``tolerance`` (0.1 pp by default, a tenth of the sampling
    error of 1,000 calibration steps), and the 2K shortlist is returned; all V logits, sorted,
    once 2K reaches V. This is a convergence check, not a bound. ``sigma`` is the largest σ of
    interest, or a function of the first shortlist giving it (the σ of the lowest target
    agreement, computed once). Column 0 is each step's top token; which token each column was is
    not kept.
    """
    _positive("start", start)
    vocab = int(logits.shape[1])
    k = min(start, vocab)
    at: float | None = None if callable(sigma) else float(sigma)
    while True:
        if 2 * k >= vocab:
            return logits.sort(dim=1, descending=True).values
        wider = logits.topk(2 * k, dim=1).values
        short = wider[:, :k]
        if at is None:
            assert callable(sigma)
            at = float(sigma(short))
        if at == 0:
            return wider
        if abs(expected_agreement(short, at) - expected_agreement(wider, at)) <= tolerance:
            return wider
        k *= 2
