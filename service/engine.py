"""The inference path for vision models: forward pass, per-row modulation, post-processing.

Runs on the batcher's worker thread. Every row carries its own σ, keyed seed and focus, so one
forward pass serves any mix of keys and tiers; the answer holds labels, indices, scores of the
*modulated* logits and masks, never the unmodulated logits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ServiceError
from .metrics import Metrics
from .modulation import BatchModulation, FocusEntry, NoiseSource, focus_field, modulate

log = logging.getLogger(__name__)


@dataclass
class PredictItem:
    """One request's rows and its modulation knobs."""

    inputs: torch.Tensor
    """Prepared inputs, rows × input shape."""
    tier: str
    sigma: float
    seed: int
    focus: list[FocusEntry] = field(default_factory=list)
    top_k: int = 1
    queue_wait: float = 0.0

    @property
    def rows(self) -> int:
        return int(self.inputs.shape[0])


class InferenceFailed(ServiceError):
    """The model failed on this request; details stay in the server log."""

    status = 500
    code = "internal_error"


class Engine:
    """Model + noise source + metrics; `run` is the batcher's `run_batch`."""

    def __init__(self, model: Any, source: NoiseSource, metrics: Metrics) -> None:
        self.model = model
        self.source = source
        self.metrics = metrics
        self.labels: list[str] = list(model.labels)

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
        x = torch.cat([it.inputs for it in items]).to(device, non_blocking=True)
        t0 = time.perf_counter()
        logits = self.model.forward(x)
        t1 = time.perf_counter()
        rows = [it.rows for it in items]
        sigma = torch.tensor([it.sigma for it in items]).repeat_interleave(torch.tensor(rows))
        seeds = torch.tensor([it.seed for it in items], dtype=torch.int64).repeat_interleave(
            torch.tensor(rows)
        )
        entries = [it.focus for it in items for _ in range(it.rows)]
        spatial = tuple(logits.shape[2:]) if logits.dim() == 4 else None
        fld = focus_field(entries, logits.shape[1], spatial, device)
        out = modulate(
            logits, BatchModulation(sigma.to(device), seeds.to(device), fld), self.source
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        results = self._classify(out, items) if out.dim() == 2 else self._segment(out, items)
        self.metrics.observe_batch(
            sum(rows), t1 - t0, t2 - t1, [(it.tier, it.queue_wait) for it in items]
        )
        return results

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
        masks = out.argmax(dim=1)  # N×H×W
        n, c = out.shape[0], out.shape[1]
        counts = torch.zeros(n, c, dtype=torch.int64, device=masks.device).scatter_add_(
            1, masks.view(n, -1), torch.ones_like(masks.view(n, -1))
        )
        masks_l, counts_l = masks.cpu().tolist(), counts.cpu().tolist()
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
