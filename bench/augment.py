"""Label-preserving augmentations of raw images (N×H×W in [0, high]), as an attacker would use.

Families (each seeded, so every figure reproduces): 1-pixel shifts (8 directions), brightness
×0.85–1.15, contrast ×0.85–1.15 about the image mean, jitter of std up to 10% of the range, two
dropped bright pixels (``drop2``), dropped pixels (5% set to 0), slight blur (a 3×3 Gaussian of
σ 0.5 mixed in). ``mixed`` draws a family per copy. ``UNSEEN`` are label-preserving transforms
the digest was not trained on specifically (gamma 0.8–1.25; a 2×2 patch erased — since the digest
trains with generic random erasing of random-size rectangles it is no longer fully unseen; a
horizontal shear of ±0.1–0.2, which the digest's rotations and rescalings do not include), to
check invariance beyond the list.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from service.modulation import sigma_for_agreement, survival_probability

FAMILIES = ("shift", "brightness", "contrast", "jitter", "drop2", "dropout", "blur")
UNSEEN = ("gamma", "erase", "shear")


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    dy, dx = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    if dy == dx == 0:
        dx = 1
    out = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    # Zero fill instead of wrapping around: a shifted photo does not wrap.
    if dy == 1:
        out[..., 0, :] = 0
    elif dy == -1:
        out[..., -1, :] = 0
    if dx == 1:
        out[..., :, 0] = 0
    elif dx == -1:
        out[..., :, -1] = 0
    return out


def _blur(x: torch.Tensor) -> torch.Tensor:
    k1 = torch.exp(-(torch.arange(-1.0, 2.0) ** 2) / (2 * 0.5**2))
    k = (k1[:, None] * k1[None, :]) / k1.sum() ** 2
    y = F.conv2d(x.reshape(-1, 1, *x.shape[-2:]), k[None, None], padding=1)
    return y.reshape(x.shape)


def augment(x: torch.Tensor, family: str, gen: torch.Generator, high: float = 16.0) -> torch.Tensor:
    """One augmented copy of every image in ``x`` (N×H×W raw values), clamped to [0, high]."""
    n = x.shape[0]
    if family == "mixed":
        return augment(x, FAMILIES[int(torch.randint(len(FAMILIES), (1,), generator=gen))], gen)
    if family == "shift":
        out = _shift(x.clone(), gen)
    elif family == "brightness":
        out = x * (0.85 + 0.3 * torch.rand(n, 1, 1, generator=gen))
    elif family == "contrast":
        mean = x.mean(dim=(-2, -1), keepdim=True)
        out = mean + (x - mean) * (0.85 + 0.3 * torch.rand(n, 1, 1, generator=gen))
    elif family == "jitter":
        std = 0.10 * high * torch.rand(n, 1, 1, generator=gen)
        out = x + std * torch.randn(x.shape, generator=gen)
    elif family == "drop2":
        # Two of the image's bright pixels (above half the range) set to 0.
        flat = x.reshape(n, -1)
        score = torch.rand(flat.shape, generator=gen) * (flat > high / 2)
        top = score.topk(2, dim=1).indices
        out = flat.scatter(1, top, 0.0).reshape(x.shape)
    elif family == "gamma":
        out = high * (x / high) ** (0.8 + 0.45 * torch.rand(n, 1, 1, generator=gen))
    elif family == "erase":
        out = x.clone()
        h, w = x.shape[-2:]
        rows = torch.randint(0, h - 1, (n,), generator=gen)
        cols = torch.randint(0, w - 1, (n,), generator=gen)
        for i in range(n):
            out[i, rows[i] : rows[i] + 2, cols[i] : cols[i] + 2] = 0
    elif family == "shear":
        # x' = x + k·y about the centre, |k| 0.1-0.2, bilinear, zero outside.
        k = (0.1 + 0.1 * torch.rand(n, generator=gen)) * torch.sign(
            torch.rand(n, generator=gen) - 0.5
        )
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = 1.0
        theta[:, 0, 1] = k
        theta[:, 1, 1] = 1.0
        grid = F.affine_grid(theta, [n, 1, *x.shape[-2:]], align_corners=False)
        out = F.grid_sample(x[:, None], grid, align_corners=False)[:, 0]
    elif family == "dropout":
        out = x * (torch.rand(x.shape, generator=gen) >= 0.05)
    elif family == "blur":
        out = x + (0.3 + 0.4 * torch.rand(n, 1, 1, generator=gen)) * (_blur(x) - x)
    else:
        names = ", ".join((*FAMILIES, *UNSEEN))
        raise ValueError(f"family: {family!r} is not one of {names}, mixed")
    return out.clamp(0.0, high)


def worst_class(z: torch.Tensor, agree: torch.Tensor) -> tuple[float, float]:
    """(overall agreement, the worst class's distance from the ordering integral's per-class
    prediction at the same overall agreement, in units of max(12 pp, 4.5 binomial SD))."""
    top = z.argmax(1)
    agree = agree.to(torch.float64)
    overall = float(agree.mean())
    p = survival_probability(z, sigma_for_agreement(z, min(max(overall, 0.11), 0.999)))
    worst = 0.0
    for c in range(z.shape[1]):
        m = top == c
        if not bool(m.any()):
            continue
        pc = float(p[m].mean())
        bound = max(0.12, 4.5 * math.sqrt(pc * (1 - pc) / int(m.sum())))
        worst = max(worst, abs(float(agree[m].mean()) - pc) / bound)
    return overall, worst
