"""The inference path for vision models: forward pass, per-row modulation, post-processing.

Runs on the batcher's worker thread. Every row carries its own σ, keyed seed and focus, so one
forward pass serves any mix of keys and tiers; the answer holds labels, indices, scores of the
*modulated* logits and masks, never the unmodulated logits.

Classification rows under keyed noise go through the tier's replay memory
(``modulation.memory``, or ``replay_redis`` with ``AIM_REDIS_URL``): the row's digest (the
model's trained digest encoder, ``models.digests``; without one the network's
``forward_with_embedding``, else its centred logits) finds a recent near-duplicate of the same
tier, whose noise cell it reuses, and then that cell's remembered answer (``answers``); a
first-seen row gets the fine digest of its own logits. Under a fallback digest the match also
needs the same clean class; a trained digest alone decides.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import ServiceError
from ..modulation import (
    BatchModulation,
    DigestEncoder,
    FocusEntry,
    KeyedNoise,
    NoiseSource,
    ReplayMemory,
    focus_field,
    modulate,
)
from ..observability.metrics import Metrics
from .answers import AnswerMemory
from .canvases import CanvasMemory
from .replay_redis import Answers, RedisReplayMemory, with_answers

log = logging.getLogger(__name__)


@dataclass
class PredictItem:
    """One request's rows and its modulation knobs."""

    inputs: torch.Tensor | np.ndarray
    """Prepared inputs, rows × input shape (an array when prepared on the event loop)."""
    tier: str
    sigma: float
    seed: int
    focus: list[FocusEntry] = field(default_factory=list)
    top_k: int = 1
    queue_wait: float = 0.0
    sizes: list[tuple[int, int] | None] | None = None
    """Per row, the H×W its segmentation mask is answered at (an image's own size; None: the
    model's input size)."""

    @property
    def rows(self) -> int:
        return int(self.inputs.shape[0])


def batch_inputs(items: Sequence[PredictItem]) -> torch.Tensor:
    """The items' inputs as one CPU tensor (arrays and tensors may mix)."""
    if all(isinstance(it.inputs, np.ndarray) for it in items):
        return torch.from_numpy(np.concatenate([it.inputs for it in items]))
    return torch.cat([torch.as_tensor(it.inputs) for it in items])


class InferenceFailed(ServiceError):
    """The model failed on this request; details stay in the server log."""

    status = 500
    code = "internal_error"


class Engine:
    """Model + noise source + metrics; `run` is the batcher's `run_batch`."""

    def __init__(
        self,
        model: Any,
        source: NoiseSource,
        metrics: Metrics,
        memory: ReplayMemory | Any | None = None,
        digest: DigestEncoder | None = None,
    ) -> None:
        self.model = model
        self.source = source
        self.metrics = metrics
        self.labels: list[str] = list(model.labels)
        keyed = isinstance(source, KeyedNoise) and model.task == "classification"
        # Not `memory or ...`: an empty memory has len 0 and is falsy.
        self.memory = (memory if memory is not None else ReplayMemory()) if keyed else None
        self.digest = digest.to(model.device) if digest is not None and keyed else None
        # The replica's own answers; with Redis they serve only while Redis fails (else the
        # memory's one round trip per batch returns the shared answers with the cells).
        self.answers = AnswerMemory() if self.memory is not None else None
        self.redis = self.memory if isinstance(self.memory, RedisReplayMemory) else None
        segmenter = isinstance(source, KeyedNoise) and model.task == "segmentation"
        self.canvases = CanvasMemory() if segmenter else None
        if self.memory is not None and self.digest is not None:
            # The digest's unit vectors need no centre; its training chose the threshold.
            self.memory.threshold = self.digest.threshold
            if isinstance(self.memory, RedisReplayMemory):
                self.memory.scope(self.digest.fingerprint())
        elif self.memory is not None and self.memory.centre is None:
            self.memory.centre = self._embedding_centre()

    def run(self, items: Sequence[PredictItem]) -> list[Any]:
        """One result (list of predictions) or exception per item; a bad item fails alone."""
        try:
            return self._run(items)
        except Exception:
            if len(items) == 1:
                log.exception("inference failed")
                return [InferenceFailed("inference failed")]
        # Isolate the culprit: retry each item alone so its batch-mates still get answers.
        return [self.run([item])[0] for item in items]

    def _run(self, items: Sequence[PredictItem]) -> list[Any]:
        device = self.model.device
        x = batch_inputs(items).to(device, non_blocking=True)
        t0 = time.perf_counter()
        logits, embedding = self._forward(x)
        t1 = time.perf_counter()
        rows = [it.rows for it in items]
        # Per-row lists built in Python: one tensor each, not a tensor and a repeat per field.
        per_row = [it for it, n in zip(items, rows, strict=True) for _ in range(n)]
        sigma = torch.tensor([it.sigma for it in per_row])
        seeds = torch.tensor([it.seed for it in per_row], dtype=torch.int64).to(device)
        spatial = (int(logits.shape[2]), int(logits.shape[3])) if logits.dim() == 4 else None
        fld = focus_field([it.focus for it in per_row], logits.shape[1], spatial, device)
        if self.redis is not None and embedding is not None and logits.dim() == 2:
            out = self._through_redis(logits, embedding, seeds, sigma, fld, per_row)
        else:
            cells = self._cells(logits, embedding, seeds, sigma, fld, per_row)
            params = BatchModulation(sigma.to(device), seeds, fld, cells)
            out = modulate(logits, params, self.source)
            if cells is not None and self.answers is not None:
                out = self._remembered(out, cells, sigma, fld, per_row)
        if self.canvases is not None:  # shifted canvases: the first mask, shifted
            focused = focus_rows(fld, len(per_row)).tolist()
            out = self.canvases.apply(x, out, [it.tier for it in per_row], sigma.tolist(), focused)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        results = self._classify(out, items) if out.dim() == 2 else self._segment(out, items)
        self.metrics.observe_batch(
            sum(rows), t1 - t0, t2 - t1, [(it.tier, it.queue_wait) for it in items]
        )
        return results

    def _embedding_centre(self) -> torch.Tensor | None:
        """The mean embedding of a shipped model's calibration inputs (None for other models:
        their fallback embedding, the centred logits, needs no centre)."""
        from ..models import SHIPPED, calibration_inputs

        embed = getattr(self.model, "forward_with_embedding", None)
        if embed is None or self.model.name not in SHIPPED:
            return None
        _, embedding = embed(calibration_inputs(self.model.name).to(self.model.device))
        return None if embedding is None else embedding.mean(dim=0)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits, and the replay memory's embedding when this engine keeps a memory."""
        if self.memory is None:
            return self.model.forward(x), None
        if self.digest is not None:
            with torch.inference_mode():
                return self.model.forward(x), self.digest(x)
        embed = getattr(self.model, "forward_with_embedding", None)
        if embed is None:
            logits = self.model.forward(x)
        else:  # VisionModel answers (logits, None) for a network without an embedding
            logits, embedding = embed(x)
            if embedding is not None:
                return logits, embedding
        # Models without an embedding (TorchScript files, ...): the centred logits stand in.
        return logits, logits - logits.mean(dim=1, keepdim=True)

    def _cells(
        self,
        logits: torch.Tensor,
        embedding: torch.Tensor | None,
        seeds: torch.Tensor,
        sigma: torch.Tensor,
        fld: torch.Tensor | None,
        per_row: Sequence[PredictItem],
    ) -> torch.Tensor | None:
        """Noise cells of classification rows: own fine digest, or a remembered match's.
        ``per_row`` names each row's item; ``sigma`` is on the CPU."""
        if self.memory is None or embedding is None or not isinstance(self.source, KeyedNoise):
            return None
        cells = self.source.fine_cells(logits, seeds)
        rows = self._noisy_rows(sigma, fld)
        if not rows:
            return cells
        tiers = [per_row[r].tier for r in rows]
        buckets = self._buckets(logits)
        assert self.memory is not None
        if len(rows) == len(per_row):
            served = self.memory.assign(tiers, embedding, buckets, cells)
            self._count(tiers, served != cells)
            return served
        idx = torch.tensor(rows, device=logits.device)
        served = self.memory.assign(tiers, embedding[idx], buckets[idx], cells[idx])
        self._count(tiers, served != cells[idx])
        cells[idx] = served
        return cells

    def _noisy_rows(self, sigma: torch.Tensor, fld: torch.Tensor | None) -> list[int]:
        """Rows the memory sees: σ > 0 (the float32 values modulate() compares) or a focus."""
        noisy = (sigma > 0) | focus_rows(fld, sigma.shape[0])
        return noisy.nonzero().reshape(-1).tolist()

    def _buckets(self, logits: torch.Tensor) -> torch.Tensor:
        # With a trained digest, the digest alone says "the same input": bucketing on the clean
        # class would send the copies an augmentation flips (10% of digits with two pixels
        # dropped) to fresh noise. The fallback digests need the class to keep inputs apart.
        top = logits.argmax(dim=1)
        return top if self.digest is None else torch.zeros_like(top)

    def _through_redis(
        self,
        logits: torch.Tensor,
        embedding: torch.Tensor,
        seeds: torch.Tensor,
        sigma: torch.Tensor,
        fld: torch.Tensor | None,
        per_row: Sequence[PredictItem],
    ) -> torch.Tensor:
        """Modulated rows with the Redis memory's cells and answers, in one round trip: every
        row is modulated with its own cell first (what it stores if it is the first writer),
        then rows Redis matched take the held answer, or their cell's noise where none is
        held. While Redis fails, the replica's own memory and answers serve (``_remembered``)."""
        assert self.redis is not None and isinstance(self.source, KeyedNoise)
        device = logits.device
        own = self.source.fine_cells(logits, seeds)
        sig = sigma.to(device)
        out = modulate(logits, BatchModulation(sig, seeds, fld, own), self.source)
        rows = self._noisy_rows(sigma, fld)
        if not rows:
            return out
        idx = torch.tensor(rows, device=device)
        sigmas = sigma.tolist()
        focused = focus_rows(fld, len(per_row)).tolist()
        tiers = [per_row[r].tier for r in rows]
        answers = Answers(
            [sigmas[r] > 0 and not focused[r] for r in rows], [sigmas[r] for r in rows], out[idx]
        )
        served, held = self.redis.assign_and_answer(
            tiers, embedding[idx], self._buckets(logits)[idx], own[idx], answers
        )
        self._count(tiers, served != own[idx])
        cells = own.clone()
        cells[idx] = served
        if held is None:  # Redis failed: the cells came from this replica's own memory
            out = modulate(logits, BatchModulation(sig, seeds, fld, cells), self.source)
            return self._remembered(out, cells, sigma, fld, per_row)
        # Matched, but no answer held: the cell's noise on the row's own logits.
        pairs = zip(held, served.tolist(), own[idx].tolist(), strict=True)
        if any(h is None and c != o for h, c, o in pairs):
            out = modulate(logits, BatchModulation(sig, seeds, fld, cells), self.source)
        return with_answers(out, rows, held)

    def _remembered(
        self,
        out: torch.Tensor,
        cells: torch.Tensor,
        sigma: torch.Tensor,
        fld: torch.Tensor | None,
        per_row: Sequence[PredictItem],
    ) -> torch.Tensor:
        """Rows served with a remembered cell get the answer first served with it."""
        assert self.answers is not None
        noisy = (sigma > 0) & ~focus_rows(fld, sigma.shape[0])
        rows = noisy.nonzero().reshape(-1).tolist()
        if not rows:
            return out
        idx = torch.tensor(rows, device=out.device)
        sig = sigma.tolist()
        served = self.answers.apply(
            out[idx],
            [per_row[r].tier for r in rows],
            [sig[r] for r in rows],
            cells[idx].tolist(),
        )
        if len(rows) == out.shape[0]:
            return served
        out = out.clone()
        out[idx] = served
        return out

    def _count(self, tiers: list[str], matched: torch.Tensor) -> None:
        """Rows per tier that reused a remembered input's cell (``aim_replay_rows_total``)."""
        per: dict[str, list[int]] = {}
        for tier, hit in zip(tiers, matched.tolist(), strict=True):
            counts = per.setdefault(tier, [0, 0])
            counts[0] += 1
            counts[1] += int(hit)
        for tier, (rows, hits) in per.items():
            self.metrics.observe_replay(tier, rows, hits)

    def _classify(self, out: torch.Tensor, items: Sequence[PredictItem]) -> list[Any]:
        k = min(max(it.top_k for it in items), out.shape[1])
        probs = torch.softmax(out.float(), dim=1)
        values, indices = probs.topk(k, dim=1)
        values_l, indices_l = values.cpu().tolist(), indices.cpu().tolist()
        results, row = [], 0
        for it in items:
            preds = []
            for r in range(row, row + it.rows):
                top = [
                    {"label": self.labels[i], "index": i, "score": v}
                    for i, v in zip(indices_l[r][: it.top_k], values_l[r][: it.top_k], strict=True)
                ]
                preds.append({**top[0], "top_k": top})
            results.append(preds)
            row += it.rows
        return results

    def _segment(self, out: torch.Tensor, items: Sequence[PredictItem]) -> list[Any]:
        sizes = [size for it in items for size in (it.sizes or [None] * it.rows)]
        if all(size is None or size == tuple(out.shape[2:]) for size in sizes):
            masks_l, counts_l = _masks(out)
        else:  # rows of other sizes: each one's (modulated) logits resized to its image
            default = tuple(self.model.input_spec.shape[1:])
            masks_l, counts_l = [], []
            for r, size in enumerate(sizes):
                mask, count = _masks(resized_logits(out[r : r + 1], size or default))
                masks_l += mask
                counts_l += count
        results, row = [], 0
        for it in items:
            preds = [
                {
                    "mask": masks_l[r],
                    "counts": {self.labels[i]: v for i, v in enumerate(counts_l[r]) if v},
                }
                for r in range(row, row + it.rows)
            ]
            results.append(preds)
            row += it.rows
        return results


def focus_rows(fld: torch.Tensor | None, n: int) -> torch.Tensor:
    """Per row (N bools, on the CPU), whether its focus field changes its output: such rows
    neither serve nor store a remembered answer or mask."""
    if fld is None:
        return torch.zeros(n, dtype=torch.bool)
    return (fld != 0).reshape(fld.shape[0], -1).any(dim=1).cpu()


def resized_logits(logits: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """N×K×h×w logits at H×W: bilinear, as transformers' semantic segmentation post-processing
    resizes a segmenter's logits to the image before its argmax."""
    if tuple(logits.shape[2:]) == tuple(size):
        return logits
    return torch.nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _masks(out: torch.Tensor) -> tuple[list[Any], list[list[int]]]:
    """Class-index masks (N×H×W lists) and per-class pixel counts of N×K×H×W logits."""
    masks = out.argmax(dim=1)  # N×H×W
    n, c = out.shape[0], out.shape[1]
    counts = torch.zeros(n, c, dtype=torch.int64, device=masks.device).scatter_add_(
        1, masks.view(n, -1), torch.ones_like(masks.view(n, -1))
    )
    return masks.cpu().tolist(), counts.cpu().tolist()
