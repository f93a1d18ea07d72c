"""Calibration: expected agreement A(σ) from unlabeled logits, and σ from a target agreement.

For iid Gaussian noise of scale σ the unmodulated top-1 class k survives with probability

    P(σ) = ∫ φ(t) Π_{j≠k} Φ((z_k − z_j)/σ + t) dt,

a one-dimensional integral, computed here by Gauss–Hermite quadrature in log space. Averaged
over calibration decisions (samples, pixels or decoding steps) it gives A(σ), which falls
monotonically from 1 to 1/C, so bisection turns a target agreement into σ. With labels, the same
integral with k = the true label predicts accuracy.

Classification rows behind a replay memory are served the noisy answer of the first input of
their cluster (``memory_anchors``): A(σ) through the memory averages that input's survival of
each row's own top-1 class (``expected_agreement(..., anchors)``), and σ is calibrated on it.

Keyed noise is a fixed function of (secret, tier, input), so the agreement it gives on the
calibration inputs is also known exactly: ``sigma_for_served_agreement`` bisects σ on that.
Segmentation is calibrated so (its pixel digest shares cells between pixels, which the integral
does not see); classification is not: a fine-digest cell is one independent Gaussian draw per
input, so the realised agreement of 500 calibration digits only adds their sampling error
(about ±2 pp) to σ, which then misses the target on every other input by as much
(docs/MODULATION.md, "Calibration through the memory"). ``valid_cached_sigma`` says whether a
cached σ can be trusted at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .errors import ModulationArgumentError
from .memory import ReplayMemory
from .noise import KeyedNoise

_NODES = 48
MAX_SIGMA = 1e4  # the largest σ calibration looks for; a cached σ above it is not trusted
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


def expected_agreement(
    logits: torch.Tensor, sigma: float, anchors: torch.Tensor | None = None
) -> float:
    """A(σ): the expected share of decisions whose top-1 class survives noise of scale σ.

    ``anchors`` (classification rows only, N indices): row i is served the noisy answer of row
    ``anchors[i]`` (a replay memory's remembered answer, ``memory_anchors``), so it agrees when
    that row's noisy top-1 is row i's own clean top-1.
    """
    if anchors is None:
        return float(survival_probability(logits, sigma).mean())
    z = decisions(logits)
    if anchors.shape != (z.shape[0],):
        raise ModulationArgumentError("anchors", tuple(anchors.shape), "needs one index per row")
    anchors = anchors.to(z.device, torch.int64)
    return float(survival_probability(z[anchors], sigma, target=z.argmax(dim=1)).mean())


def predicted_accuracy(logits: torch.Tensor, labels: torch.Tensor, sigma: float) -> float:
    """Expected accuracy under noise of scale σ, given the true label of every decision."""
    return float(survival_probability(logits, sigma, target=labels).mean())


def memory_anchors(embeddings: torch.Tensor, threshold: float) -> torch.Tensor:
    """For rows arriving in order at a fresh replay memory of match ``threshold``, the row whose
    remembered answer each one is served (its own index when it matches nothing), N int64.

    Each row is given its own index as its cell, so the cell the memory serves names the row
    that first held it: the cluster's first writer, whose answer the cluster shares.
    """
    n = embeddings.shape[0]
    memory = ReplayMemory(threshold=threshold, capacity=max(1, n))
    index = torch.arange(n, device=embeddings.device)
    zeros = torch.zeros(n, dtype=torch.int64, device=embeddings.device)
    return memory.assign(["calibration"] * n, embeddings, zeros, index)


def sigma_for_agreement(
    logits: torch.Tensor,
    target: float,
    tolerance: float = 1e-4,
    max_sigma: float = MAX_SIGMA,
    anchors: torch.Tensor | None = None,
) -> float:
    """The σ at which A(σ) equals ``target`` (bisection on log σ; A is monotone in σ).

    ``target`` is in (1/C, 1]; 1 gives σ = 0. ``anchors``: see ``expected_agreement``.
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
    while expected_agreement(logits, hi, anchors) > target:
        hi *= 2.0
        if hi > max_sigma:
            raise ModulationArgumentError("target", target, "is not reached below max_sigma")
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if expected_agreement(logits, mid, anchors) > target:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + tolerance:
            break
    return math.sqrt(lo * hi)


def served_agreement(logits: torch.Tensor, sigma: float, noise: torch.Tensor) -> float:
    """The share of decisions whose top-1 class survives ``logits + σ · noise`` (realised, not
    expected: the keyed noise actually served is a fixed function of the input)."""
    z = decisions(logits)
    eps = decisions(noise)
    return float(((z + sigma * eps).argmax(dim=1) == z.argmax(dim=1)).double().mean())


def sigma_for_served_agreement(
    logits: torch.Tensor,
    target: float,
    noise_at: Callable[[float], torch.Tensor],
    start: float,
    iterations: int = 40,
) -> float:
    """The σ at which the served agreement on ``logits`` reaches ``target`` (bisection on log σ).

    ``noise_at(σ)`` is the noise served at σ (the same tensor for every σ when the digest does
    not depend on σ). The served agreement is a step function of σ, not strictly monotone for
    σ-dependent digests; bisection still ends at a crossing of the target. ``start`` (the ordering
    integral's σ) brackets the search.
    """
    if not (math.isfinite(start) and start > 0):
        raise ModulationArgumentError("start", start, "has to be a positive number")

    def agreement(s: float) -> float:
        return served_agreement(logits, s, noise_at(s))

    lo, hi = start / 2.0, start * 2.0
    for _ in range(30):
        if agreement(lo) > target:
            break
        lo /= 2.0
    for _ in range(30):
        if agreement(hi) <= target:
            break
        hi *= 2.0
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        if agreement(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-5:
            break
    return math.sqrt(lo * hi)


def valid_cached_sigma(value: object, target: float) -> float | None:
    """A cached σ as a float when it can be one for ``target``: a finite number (not a bool),
    ≥ 0, > 0 for a target below 1, and small enough that ``σ · noise`` stays finite in float32;
    else None (the caller recomputes)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    sigma = float(value)
    if not math.isfinite(sigma) or sigma < 0 or sigma > MAX_SIGMA:
        return None
    if target < 1.0 and sigma == 0.0:
        return None
    return sigma


def served_noise(
    keyed: KeyedNoise, tier: str, logits: torch.Tensor
) -> Callable[[float], torch.Tensor]:
    """``noise_at(σ)``: the keyed noise a first-seen input of ``tier`` is served at σ.

    Classification rows (N×C) take the σ-independent fine digest of their logits (the cell a
    replay memory starts from), so one tensor serves every σ; segmentation pixels (N×C×H×W) take
    the σ-scaled digest, recomputed per σ.
    """
    n = logits.shape[0]
    seeds = keyed.seeds([tier] * n).to(logits.device)
    if logits.dim() == 2:
        cells = keyed.fine_cells(logits, seeds)
        fixed = keyed.sample(logits, seeds, torch.ones(n), 1, cells=cells)[0]
        return lambda sigma: fixed
    return lambda sigma: keyed.sample(logits, seeds, torch.full((n,), float(sigma)), 1)[0]
