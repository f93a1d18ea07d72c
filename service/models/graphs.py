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
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

_CHECK_SIZES = (1, 3, 32)
"""Batch sizes a trace has to reproduce exactly (it was recorded at the middle one)."""


class _Method(nn.Module):
    """``module.<name>`` as a module's forward, so it can be traced on its own."""

    def __init__(self, module: nn.Module, name: str) -> None:
        super().__init__()
        self.inner = module
        self.name = name

    def forward(self, x: torch.Tensor) -> Any:
        return getattr(self.inner, self.name)(x)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return (
            isinstance(b, (tuple, list))
            and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b, strict=True))
        )
    return False


def traced(
    module: nn.Module,
    method: str,
    shape: Sequence[int],
    device: torch.device,
) -> Callable[[torch.Tensor], Any] | None:
    """``module.<method>`` traced on a batch of ``shape`` inputs and frozen, or None when it
    cannot be traced or does not reproduce the eager results exactly."""
    if module.training:
        return None
    gen = torch.Generator().manual_seed(0)

    def batch(n: int) -> torch.Tensor:
        return torch.rand(n, *shape, generator=gen).to(device)

    try:
        with warnings.catch_warnings(), torch.inference_mode():
            # Deprecation notices of torch.jit and the tracer's notes on shape checks in
            # torch.nn.functional (they raise on bad shapes, which a fixed input spec excludes).
            warnings.simplefilter("ignore")
            graph = torch.jit.freeze(
                torch.jit.trace(_Method(module, method).eval(), batch(_CHECK_SIZES[1])),
                optimize_numerics=False,  # no conv-bn folding: results stay bit-for-bit
            )
            for n in _CHECK_SIZES:
                x = batch(n)
                if not _same(getattr(module, method)(x), graph(x)):
                    log.warning("traced %s.%s differs from eager at batch %d: eager kept",
                                type(module).__name__, method, n)  # fmt: skip
                    return None
    except Exception as exc:  # tracing is an optimisation: never a reason not to serve
        log.warning("could not trace %s.%s (%s): eager kept", type(module).__name__, method, exc)
        return None
    result: Callable[[torch.Tensor], Any] = graph
    return result
