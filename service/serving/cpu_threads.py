"""How many intra-op threads the forward pass gets on CPU, when the settings do not say.

Half the cores suits a small model (the shipped digits CNN: about 4 ms a batch), which batches
better than it parallelises while the other half serves HTTP. A real model is compute-bound:
its forward is most of each request's CPU, and half the cores left half the machine idle
(ViT-Ti/16 on 2 cores: 0.58× LitServe, 34% of the raw forward; docs/PERFORMANCE.md). So the
default is measured, not guessed: a warm batch slower than ``heavy_ms`` gets every core.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

PROBE_ROWS = 8
"""Rows in the probing batch: the batch size a handful of concurrent clients form."""


def half_the_cores(cores: int | None = None) -> int:
    """The small-model default: half the cores, at least 1."""
    return max(1, (cores or os.cpu_count() or 2) // 2)


def probe_forward_ms(adapter: Any, rows: int = PROBE_ROWS) -> float:
    """Milliseconds of one warm forward of ``rows`` neutral inputs (the best of two)."""
    spec = adapter.input_spec
    batch = torch.zeros(rows, *spec.shape)
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        adapter.forward(batch)
        best = min(best, time.perf_counter() - t0)
    return best * 1000.0


def default_threads(forward_ms: float, heavy_ms: float, cores: int | None = None) -> int:
    """Every core for a model whose probing batch took ``heavy_ms`` or more, else half."""
    total = cores or os.cpu_count() or 2
    return total if forward_ms >= heavy_ms else half_the_cores(total)


def choose_threads(adapter: Any, heavy_ms: float) -> tuple[int, float | None]:
    """Set torch's intra-op threads for a vision ``adapter`` on CPU by its measured forward;
    returns the threads and the probe's milliseconds (None when nothing was probed)."""
    if getattr(adapter, "input_spec", None) is None:  # generation: keep half the cores
        threads = half_the_cores()
        torch.set_num_threads(threads)
        return threads, None
    torch.set_num_threads(half_the_cores())
    ms = probe_forward_ms(adapter)
    threads = default_threads(ms, heavy_ms)
    torch.set_num_threads(threads)
    return threads, ms
