"""Remembered answers: an input the replay memory matches to an earlier one gets that input's
modulated output, not just its noise.

Reusing the noise cell alone is not enough: an augmented copy (two pixels dropped) moves the
clean logits, and the same noise on moved logits gives another answer for digits near a
boundary, so a vote over copies still averaged something out (measured: +10.9 pp over copies
with two dropped pixels with the noise reused, see docs/MODULATION.md). The answer of a
(tier, σ, cell) is therefore kept once, by its first writer, and served to every later row
that the memory gives that cell; rows with a focus request are neither served nor stored (their
output depends on it). Bounded: the oldest of ``capacity`` answers is forgotten first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch


class AnswerMemory:
    """(tier, σ, cell) → the modulated logit row first served with it; see the module doc."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        self.capacity = capacity
        self._rows: OrderedDict[tuple[str, float, int], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def apply(
        self, out: torch.Tensor, tiers: list[str], sigmas: list[float], cells: list[int]
    ) -> torch.Tensor:
        """``out`` (N×C modulated rows, one tier/σ/cell per row) with remembered rows in place
        of the rows they answer for; remembers the others. A new tensor when any row changed."""
        replace: list[tuple[int, torch.Tensor]] = []
        with self._lock:
            for i, key in enumerate(zip(tiers, sigmas, cells, strict=True)):
                held = self._rows.get(key)
                if held is None:
                    self._rows[key] = out[i].detach().to("cpu", copy=True)
                    if len(self._rows) > self.capacity:
                        self._rows.popitem(last=False)
                else:
                    self._rows.move_to_end(key)
                    replace.append((i, held))
        if not replace:
            return out
        out = out.clone()
        idx = torch.tensor([i for i, _ in replace], device=out.device)
        out[idx] = torch.stack([row for _, row in replace]).to(out.device, out.dtype)
        return out
