"""The shipped networks as TorchScript graphs: one trip through the GIL per forward pass.

Under load the forward thread shares the GIL with the event loop. Every eager torch call (each
layer, each op of the centring pass) releases the GIL and has to wait for it back, up to the
switch interval while the loop is busy: the digits network's forward with its embedding on 32
rows took 1.6 ms alone and 15.5 ms beside a thread spinning in Python. Traced and frozen, the
whole pass is one call that runs without the GIL: 1.7 ms alone, 3.5 ms beside the same thread
(`python bench/engine_batch.py --network`; docs/PERFORMANCE.md, "Traced forward").

A trace records the ops one example ran, so it is only used where it is known to be right:
for the shipped networks (shape-only control flow, written here), and only after it gave
bit-for-bit the eager results on batches of several sizes. Anything else, and any failure to
trace, keeps the eager module (logged).

A Hugging Face vision model may also run *fused* on the CPU (``optimize=True``): oneDNN's
inference graph (``torch.jit.optimize_for_inference``: batch norms folded into convolutions,
convolutions in oneDNN's layout). Its float results differ from eager in the last digits (about
1e-5 on ResNet-50's logits), so it is kept only where it answers within ``FUSED_TOLERANCE`` of
eager with the same top class on every checked row and takes at most ``FUSED_GAIN`` of the
exact graph's time at load; a convolutional network gains most (ResNet-50 batch 8 on 2 cores:
about 1.5x), a transformer nothing (ViT-Ti: about even, so its exact graph stays).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

_CHECK_SIZES = (1, 3, 32)
"""Batch sizes a trace has to reproduce exactly (it was recorded at the middle one)."""

FUSED_TOLERANCE = 1e-4
"""Largest difference from eager a fused graph may give, relative to the largest eager value."""

FUSED_GAIN = 0.85
"""A fused graph is kept when it takes at most this share of the exact graph's time on a batch
of ``_TIMED_BATCH`` (measured on 2 cores: ResNet-50 0.68; ViT-Ti 0.89-1.05, SegFormer-B0 about
2, which keep the exact graph)."""

_TIMED_BATCH = 8
"""A full batch of 8 clients, where the gain is clearest (ResNet-50: 0.68 at 8, 0.8 at 3)."""

_RACE_RUNS = 3


class _Method(nn.Module):
    """``module.<name>`` as a module's forward, so it can be traced on its own."""

    def __init__(self, module: nn.Module, name: str) -> None:
        super().__init__()
        self.inner = module
        self.name = name

    def forward(self, x: torch.Tensor) -> Any:
        return getattr(self.inner, self.name)(x)


def _same(a: Any, b: Any, close: bool = False) -> bool:
    """Same structure (tensors, tuples, lists) and shapes, and tensors equal bit for bit, or
    with ``close`` within the fused graph's tolerance (``_close``)."""
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape != b.shape:
            return False
        return _close(a, b) if close else torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return (
            isinstance(b, (tuple, list))
            and len(a) == len(b)
            and all(_same(x, y, close) for x, y in zip(a, b, strict=True))
        )
    return False


def traced(
    module: nn.Module,
    method: str,
    shape: Sequence[int],
    device: torch.device,
    *,
    optimize: bool = False,
) -> Callable[[torch.Tensor], Any] | None:
    """``module.<method>`` traced on a batch of ``shape`` inputs and frozen, or None when it
    cannot be traced or does not reproduce the eager results exactly. ``optimize``: on the CPU,
    the fused graph instead where it is close enough to eager and faster (module docstring)."""
    if module.training:
        return None
    gen = torch.Generator().manual_seed(0)

    def batch(n: int) -> torch.Tensor:
        return torch.rand(n, *shape, generator=gen).to(device)

    eager = getattr(module, method)
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            # Deprecation notices of torch.jit and the tracer's notes on shape checks in
            # torch.nn.functional (they raise on bad shapes, which a fixed input spec excludes).
            warnings.simplefilter("ignore")
            trace = torch.jit.trace(_Method(module, method).eval(), batch(_CHECK_SIZES[1]))
            # freeze() works on a copy: the trace stays for the fused graph below.
            graph = torch.jit.freeze(trace, optimize_numerics=False)  # no conv-bn folding
            checks = [(x, eager(x)) for x in map(batch, _CHECK_SIZES)]
            for x, want in checks:
                if not _same(want, graph(x)):
                    log.warning("traced %s.%s differs from eager at batch %d: eager kept",
                                type(module).__name__, method, len(x))  # fmt: skip
                    return None
    except Exception as exc:  # tracing is an optimisation: never a reason not to serve
        log.warning("could not trace %s.%s (%s): eager kept", type(module).__name__, method, exc)
        return None
    result: Callable[[torch.Tensor], Any] = graph
    if optimize and device.type == "cpu":
        # The exact graph already showed the trace holds at every checked size; the fused one
        # is checked on the small ones (a batch of 32 more would add seconds to a start).
        name = f"{type(module).__name__}.{method}"
        result = _fused(name, trace, checks[:2], graph, batch(_TIMED_BATCH)) or graph
    return result


def _fused(
    name: str,
    trace: torch.jit.ScriptModule,
    checks: Sequence[tuple[torch.Tensor, Any]],
    exact: Callable[[torch.Tensor], Any],
    timed: torch.Tensor,
) -> Callable[[torch.Tensor], Any] | None:
    """oneDNN's fused inference graph of ``trace`` when it answers close to eager on
    ``checks`` (inputs and eager's answers: same top class, within ``FUSED_TOLERANCE``) and is
    faster than ``exact`` on ``timed``; else None."""
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            fused = torch.jit.optimize_for_inference(trace)
            for x, want in checks:
                if not _same(want, fused(x), close=True):
                    log.info("fused %s is not close to eager at batch %d: exact kept",
                             name, len(x))  # fmt: skip
                    return None
            exact_s, fused_s = _race(exact, fused, timed)
    except Exception as exc:  # an optimisation: never a reason not to serve
        log.info("could not fuse %s (%s): exact graph kept", name, exc)
        return None
    if fused_s > FUSED_GAIN * exact_s:
        log.info("fused %s is not faster (%.1f vs %.1f ms): exact graph kept",
                 name, fused_s * 1e3, exact_s * 1e3)  # fmt: skip
        return None
    log.info("%s runs fused (oneDNN): %.1f ms against %.1f ms exact", name, fused_s * 1e3,
             exact_s * 1e3)  # fmt: skip
    result: Callable[[torch.Tensor], Any] = fused
    return result


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Values within ``FUSED_TOLERANCE`` of the largest, and the same top class per row (per
    pixel for a segmenter's N×K×H×W logits); integer tensors equal."""
    if a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    scale = float(a.abs().max()) if a.numel() else 0.0
    if not bool(((a - b).abs() <= FUSED_TOLERANCE * max(scale, 1.0)).all()):
        return False
    return a.dim() < 2 or torch.equal(a.argmax(dim=1), b.argmax(dim=1))


def _race(
    a: Callable[[torch.Tensor], Any], b: Callable[[torch.Tensor], Any], x: torch.Tensor
) -> tuple[float, float]:
    """The fastest of ``_RACE_RUNS`` calls of each, taken in turn after one warm call each, so
    that a burst of other load on the machine slows both rather than one."""
    a(x), b(x)  # a new batch size: oneDNN makes its kernels for it on the first call
    best = [float("inf"), float("inf")]
    for _ in range(_RACE_RUNS):
        for i, graph in enumerate((a, b)):
            start = time.perf_counter()
            graph(x)
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]
