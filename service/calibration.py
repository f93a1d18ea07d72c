"""Calibration: the σ each `utility` tier is sold at, the cache that keeps it, and the logits
each model kind calibrates on.

The math (the agreement integral, bisection to a target) is pure torch in
``modulation/calibration.py``; this module decides what to calibrate on and remembers the
answer. A vision model calibrates on its unlabeled calibration inputs (the shipped models' split;
user models have none and take raw `sigma` tiers), a generation model on the teacher-forced steps
of its calibration text, each step cut to a shortlist of its largest logits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import TierConfig
from .models.errors import InputError, describe_value
from .modulation import (
    KeyedNoise,
    expected_agreement,
    served_agreement,
    served_noise,
    sigma_for_agreement,
    sigma_for_served_agreement,
    valid_cached_sigma,
)

log = logging.getLogger(__name__)

# Bumped when the calibration method changes, so cached σ from an older method are not reused.
CALIBRATION_VERSION = "ghq48-v2"  # v2: cached values validated; served-noise σ
# Part of a generation model's cache key: how its step logits are shortlisted.
SHORTLIST_METHOD = "shortlist-v1"


class CalibrationCache:
    """σ per (model, calibration inputs, noise, target), in a JSON file; failures only cost a
    recompute. Values come back as stored (any JSON value): the caller validates them."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.warning(
                "calibration cache unreadable, recomputing",
                extra={"file": str(self.path), "error": f"{type(exc).__name__}: {exc}"[:200]},
            )
            return {}
        if not isinstance(data, dict):
            log.warning(
                "calibration cache is not a mapping, recomputing", extra={"file": str(self.path)}
            )
            return {}
        return data

    def get(self, key: str) -> Any:
        return self._read().get(key)

    def put(self, key: str, sigma: float) -> None:
        if self.path is None:
            return
        data = self._read()
        data[key] = sigma
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            tmp.replace(self.path)
        except OSError as exc:  # a read-only cache dir must not stop the server
            log.warning("calibration cache not written", extra={"error": str(exc)})


def calibration_key(
    model_fingerprint: str, inputs: torch.Tensor, target: float, noise: str = ""
) -> str:
    """``noise`` names the served noise σ was calibrated against (empty: the integral)."""
    h = hashlib.sha256()
    h.update(CALIBRATION_VERSION.encode())
    h.update(model_fingerprint.encode())
    h.update(inputs.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr(float(target)).encode())
    if noise:
        h.update(b"\x00served\x00" + noise.encode())
    return h.hexdigest()


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


# A cached σ is trusted when it reproduces its target on the calibration logits within this.
SERVED_TOLERANCE = 0.01
INTEGRAL_TOLERANCE = 0.005


def tier_sigmas(
    configs: Sequence[TierConfig],
    calibration: CalibrationSet,
    cache: CalibrationCache | None,
    keyed: KeyedNoise | None = None,
) -> dict[str, float]:
    """Every tier's σ: raw `sigma` as given, `utility` 1 as 0, other `utility` targets by
    calibration (cached; the logits are computed at most once).

    With ``keyed`` (the server's keyed noise) and a vision model, σ is bisected on the agreement
    the tier's keyed noise actually gives on the calibration inputs, starting from the ordering
    integral's σ. A cached σ is used only when valid (a finite number, > 0 for a target below 1,
    within the largest σ calibration looks for) and, for vision models, when it reproduces the
    target on the calibration logits; anything else is recomputed with a warning naming the
    file, so a tampered cache can neither serve a tier at another utility nor stop the server.
    """
    state: dict[str, torch.Tensor] = {}

    def logits() -> torch.Tensor:
        if calibration.logits is None:
            raise ValueError("no calibration logits")
        if "z" not in state:
            state["z"] = calibration.logits()
        return state["z"]

    served = keyed is not None and calibration.served
    sigmas: dict[str, float] = {}
    for cfg in configs:
        if cfg.sigma is not None:
            sigmas[cfg.name] = cfg.sigma
            continue
        assert cfg.utility is not None
        if cfg.utility >= 1.0:
            sigmas[cfg.name] = 0.0
            continue
        noise = (
            hashlib.sha256(str(keyed.tier_seed(cfg.name)).encode()).hexdigest()
            if served and keyed
            else ""
        )
        key = (
            calibration_key(calibration.fingerprint, calibration.inputs, cfg.utility, noise)
            if calibration.inputs is not None
            else None
        )
        raw = cache.get(key) if cache is not None and key is not None else None
        if raw is not None:
            sigma = valid_cached_sigma(raw, cfg.utility)
            if sigma is not None and calibration.served and calibration.logits is not None:
                sigma = _reproduces(
                    logits(), sigma, cfg.utility, keyed if served else None, cfg.name
                )
            if sigma is not None:
                sigmas[cfg.name] = sigma
                continue
            log.warning(
                "calibration cache entry rejected, recomputing",
                extra={
                    "file": str(cache.path if cache is not None else ""),
                    "tier": cfg.name,
                    "value": repr(raw)[:60],
                },
            )
        if calibration.logits is None:
            raise ValueError(
                f"tiers.{cfg.name}.utility needs calibration inputs for this model; "
                "give a raw `sigma` instead"
            )
        sigma = sigma_for_agreement(logits(), cfg.utility)
        if served and keyed is not None:
            noise_at = served_noise(keyed, cfg.name, logits())
            sigma = sigma_for_served_agreement(logits(), cfg.utility, noise_at, start=sigma)
        if cache is not None and key is not None:
            cache.put(key, sigma)
        sigmas[cfg.name] = sigma
    return sigmas


def _reproduces(
    z: torch.Tensor, sigma: float, target: float, keyed: KeyedNoise | None, tier: str
) -> float | None:
    """``sigma`` when it gives ``target`` on the calibration logits ``z`` (quick check)."""
    if keyed is not None:
        got = served_agreement(z, sigma, served_noise(keyed, tier, z)(sigma))
        return sigma if abs(got - target) <= SERVED_TOLERANCE else None
    got = expected_agreement(z, sigma)
    return sigma if abs(got - target) <= INTEGRAL_TOLERANCE else None


# Calibration data per model kind ----------------------------------------------------------------


def calibration_set(
    adapter: Any, model: str | dict[str, Any], tiers: Sequence[TierConfig]
) -> CalibrationSet:
    """What ``adapter`` calibrates on, by model kind (``model`` is the config's model entry)."""
    if adapter.task == "generation":
        return generation_calibration(adapter, [t.utility for t in tiers if t.utility is not None])
    return vision_calibration(adapter, model)


def vision_calibration(adapter: Any, model: str | dict[str, Any]) -> CalibrationSet:
    """A shipped vision model calibrates on its unlabeled calibration split; a user model has no
    calibration data."""
    from .models import calibration_inputs
    from .models.shipped import SHIPPED

    if not (isinstance(model, str) and model in SHIPPED):
        return CalibrationSet(adapter.fingerprint(), None, None)
    inputs = calibration_inputs(model)

    def logits() -> torch.Tensor:
        return adapter.forward(inputs.to(adapter.device)).cpu()

    return CalibrationSet(adapter.fingerprint(), inputs, logits, served=True)


def generation_calibration(lm: Any, targets: Sequence[float]) -> CalibrationSet:
    """The teacher-forced steps of the model's calibration text (read only when a target below 1
    needs it), keyed by the text and the step budget."""
    from .models import read_texts

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
