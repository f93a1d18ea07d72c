"""Calibration: expected agreement A(σ) from unlabeled logits, and σ from a target agreement.

For iid Gaussian noise of scale σ the unmodulated top-1 class k survives with probability

    P(σ) = ∫ φ(t) Π_{j≠k} Φ((z_k − z_j)/σ + t) dt,

a one-dimensional integral, computed here by Gauss–Hermite quadrature in log space. Averaged
over calibration decisions (samples, pixels or decoding steps) it gives A(σ), which falls
monotonically from 1 to 1/C, so bisection turns a target agreement into σ. With labels, the same
integral with k = the true label predicts accuracy.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import ModulationArgumentError

_NODES = 48
_CHUNK_ELEMENTS = 1 << 23


def decisions(logits: torch.Tensor) -> torch.Tensor:
    """Flatten logits to one row per decision: N×C stays, N×C×H×W becomes (N·H·W)×C."""
    if logits.dim() == 2:
        return logits
    if logits.dim() == 4:
        return logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    raise ModulationArgumentError("logits", tuple(logits.shape), "has to be N×C or N×C×H×W")


def _quadrature(nodes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x, w = np.polynomial.hermite.hermgauss(nodes)
    t = torch.tensor(x * math.sqrt(2.0), dtype=torch.float64, device=device)
    weights = torch.tensor(w / math.sqrt(math.pi), dtype=torch.float64, device=device)
    return t, weights


def survival_probability(
    logits: torch.Tensor,
    sigma: float,
    target: torch.Tensor | None = None,
    nodes: int = _NODES,
) -> torch.Tensor:
    """P that class ``target`` (default: the unmodulated top-1) stays top-1 under noise, per row."""
    if not math.isfinite(sigma) or sigma < 0:
        raise ModulationArgumentError("sigma", sigma, "has to be a finite non-negative number")
    z = decisions(logits).to(torch.float64)
    if not bool(torch.isfinite(z).all()):
        raise ModulationArgumentError("logits", "non-finite", "has to hold finite values only")
    d, c = z.shape
    k = z.argmax(dim=1) if target is None else target.to(z.device, torch.int64).reshape(-1)
    if k.shape != (d,):
        raise ModulationArgumentError("labels", tuple(k.shape), f"has to hold {d} values")
    if bool(((k < 0) | (k >= c)).any()):
        raise ModulationArgumentError(
            "labels", int(k[(k < 0) | (k >= c)][0]), f"has to be in [0, {c})"
        )
    zk = z.gather(1, k[:, None])
    gaps = zk - z  # D×C, the own class has gap 0 and is masked out below
    own = torch.zeros_like(z, dtype=torch.bool).scatter_(1, k[:, None], True)
    if sigma == 0:
        return ((gaps > 0) | own).all(dim=1).to(torch.float64)
    t, w = _quadrature(nodes, z.device)
    out = torch.empty(d, dtype=torch.float64, device=z.device)
    rows = max(1, _CHUNK_ELEMENTS // (c * nodes))
    for start in range(0, d, rows):
        g = gaps[start : start + rows] / sigma
        m = own[start : start + rows]
        log_phi = torch.special.log_ndtr(g[:, :, None] + t[None, None, :])  # D×C×nodes
        log_phi = log_phi.masked_fill(m[:, :, None], 0.0)
        out[start : start + rows] = (log_phi.sum(dim=1).exp() * w).sum(dim=1)
    return out.clamp_(0.0, 1.0)


def expected_agreement(logits: torch.Tensor, sigma: float) -> float:
    """A(σ): the expected share of decisions whose top-1 class survives noise of scale σ."""
    return float(survival_probability(logits, sigma).mean())


def predicted_accuracy(logits: torch.Tensor, labels: torch.Tensor, sigma: float) -> float:
    """Expected accuracy under noise of scale σ, given the true label of every decision."""
    return float(survival_probability(logits, sigma, target=labels).mean())


def sigma_for_agreement(
    logits: torch.Tensor, target: float, tolerance: float = 1e-4, max_sigma: float = 1e4
) -> float:
    """The σ at which A(σ) equals ``target`` (bisection on log σ; A is monotone in σ).

    ``target`` is in (1/C, 1]; 1 gives σ = 0.
    """
    num_classes = decisions(logits).shape[1]
    if not (isinstance(target, int | float) and math.isfinite(target)):
        raise ModulationArgumentError("target", target, "has to be a number")
    if target >= 1.0:
        if target > 1.0:
            raise ModulationArgumentError("target", target, "has to be at most 1")
        return 0.0
    if target <= 1.0 / num_classes:
        raise ModulationArgumentError(
            "target", target, f"has to be above chance (1/{num_classes} = {1 / num_classes:.4f})"
        )
    lo, hi = 1e-4, 1.0
    while expected_agreement(logits, hi) > target:
        hi *= 2.0
        if hi > max_sigma:
            raise ModulationArgumentError("target", target, "is not reached below max_sigma")
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if expected_agreement(logits, mid) > target:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + tolerance:
            break
    return math.sqrt(lo * hi)
