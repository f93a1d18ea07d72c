"""Contrastive training of the replay digest (``digest.DigestEncoder``) on unlabeled inputs.

SimCLR's recipe, small: every step draws a batch of inputs, makes two augmented views of each
(a random label-preserving family, sometimes two composed) and trains with NT-Xent, so a view is
nearest its twin among all 2B views. The families are generic label-preserving ones: shifts of
1-2 pixels (diagonals too), brightness and contrast ×0.8-1.2, jitter up to 12% of the range,
1-4 dropped bright pixels and 5% random dropout, slight blur, small rotations and rescalings,
and random erasing of one rectangle (torchvision's default sizes), for occlusions in general.

``separation`` measures what the memory needs: per family, the cosine of an augmented copy to
its original, against each input's nearest *distinct* input; ``pick_threshold`` places the
memory's match threshold between them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .digest import DigestEncoder

FAMILIES = (
    "shift",
    "brightness",
    "contrast",
    "jitter",
    "drop",
    "dropout",
    "blur",
    "affine",
    "erase",
)


def _shift(x: torch.Tensor, gen: torch.Generator, low: float) -> torch.Tensor:
    n = x.shape[0]
    out = torch.empty_like(x)
    steps = torch.randint(-1, 2, (n, 2), generator=gen)
    far = torch.rand(n, generator=gen) < 0.2
    steps[far] *= 2
    for dy in (-2, -1, 0, 1, 2):
        for dx in (-2, -1, 0, 1, 2):
            m = (steps[:, 0] == dy) & (steps[:, 1] == dx)
            if not bool(m.any()):
                continue
            y = torch.roll(x[m], shifts=(dy, dx), dims=(-2, -1))
            # A shifted photo does not wrap: the uncovered border takes the background value.
            if dy > 0:
                y[..., :dy, :] = low
            elif dy < 0:
                y[..., dy:, :] = low
            if dx > 0:
                y[..., :, :dx] = low
            elif dx < 0:
                y[..., :, dx:] = low
            out[m] = y
    return out


def _blur(x: torch.Tensor) -> torch.Tensor:
    k1 = torch.exp(-(torch.arange(-1.0, 2.0) ** 2) / (2 * 0.6**2))
    k = (k1[:, None] * k1[None, :]) / k1.sum() ** 2
    c = x.shape[1]
    return F.conv2d(x, k[None, None].repeat(c, 1, 1, 1).to(x), padding=1, groups=c)


def _drop(x: torch.Tensor, gen: torch.Generator, low: float) -> torch.Tensor:
    """1-4 of each image's bright pixels (above its median) set to the background."""
    n = x.shape[0]
    flat = x.mean(dim=1).reshape(n, -1)
    bright = flat > flat.median(dim=1, keepdim=True).values
    score = torch.rand(flat.shape, generator=gen) * bright
    k = torch.randint(1, 5, (n, 1), generator=gen)
    ranks = score.argsort(dim=1, descending=True).argsort(dim=1)
    hit = (ranks < k) & bright
    return x.masked_fill(hit.view(n, 1, *x.shape[-2:]), low)


def _erase(x: torch.Tensor, gen: torch.Generator, low: float) -> torch.Tensor:
    """Random erasing (Zhong et al.; torchvision's defaults): one rectangle of 2-33% of the
    image's area, aspect ratio 0.3-3.3, anywhere, set to the background. Generic occlusion,
    not a particular patch size."""
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    area = h * w * (0.02 + 0.31 * torch.rand(n, generator=gen))
    ratio = torch.exp(
        math.log(0.3) + (math.log(3.3) - math.log(0.3)) * torch.rand(n, generator=gen)
    )
    eh = (area * ratio).sqrt().round().clamp(1, h).long()
    ew = (area / ratio).sqrt().round().clamp(1, w).long()
    top = (torch.rand(n, generator=gen) * (h - eh + 1)).long()
    left = (torch.rand(n, generator=gen) * (w - ew + 1)).long()
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    box = (ys >= top.view(n, 1, 1)) & (ys < (top + eh).view(n, 1, 1))
    box = box & (xs >= left.view(n, 1, 1)) & (xs < (left + ew).view(n, 1, 1))
    return x.masked_fill(box[:, None], low)


def _affine(x: torch.Tensor, gen: torch.Generator, low: float) -> torch.Tensor:
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) - 0.5) * math.radians(20)
    scale = 0.9 + 0.2 * torch.rand(n, generator=gen)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        (torch.stack((cos, -sin, torch.zeros(n)), 1), torch.stack((sin, cos, torch.zeros(n)), 1)),
        1,
    )
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x - low, grid, align_corners=False) + low


def augment(
    x: torch.Tensor, family: str, gen: torch.Generator, low: float, high: float
) -> torch.Tensor:
    """One copy of every input of ``x`` (N×C×H×W, prepared values in [low, high])."""
    n, span = x.shape[0], high - low
    per = (n, 1, 1, 1)
    if family == "shift":
        out = _shift(x, gen, low)
    elif family == "brightness":
        out = low + (x - low) * (0.8 + 0.4 * torch.rand(per, generator=gen))
    elif family == "contrast":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        out = mean + (x - mean) * (0.8 + 0.4 * torch.rand(per, generator=gen))
    elif family == "jitter":
        std = 0.12 * span * torch.rand(per, generator=gen)
        out = x + std * torch.randn(x.shape, generator=gen)
    elif family == "drop":
        out = _drop(x, gen, low)
    elif family == "dropout":
        out = torch.where(torch.rand(x.shape, generator=gen) < 0.05, low, x)
    elif family == "blur":
        out = x + (0.2 + 0.6 * torch.rand(per, generator=gen)) * (_blur(x) - x)
    elif family == "affine":
        out = _affine(x, gen, low)
    elif family == "erase":
        out = _erase(x, gen, low)
    else:
        raise ValueError(f"family: {family!r} is not one of {', '.join(FAMILIES)}")
    return out.clamp(low, high)


def view(x: torch.Tensor, gen: torch.Generator, low: float, high: float) -> torch.Tensor:
    """A training view: per input a random family, and for half of them a second one on top."""
    out = x
    for depth in range(2):
        pick = torch.randint(len(FAMILIES), (x.shape[0],), generator=gen)
        if depth:
            pick[torch.rand(x.shape[0], generator=gen) < 0.5] = -1
        nxt = out.clone()
        for f, family in enumerate(FAMILIES):
            m = pick == f
            if bool(m.any()):
                nxt[m] = augment(out[m], family, gen, low, high)
        out = nxt
    return out


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss for unit rows ``a`` and ``b`` (row i of each are the two views of i)."""
    z = torch.cat((a, b))
    n = a.shape[0]
    sims = (z @ z.t()) / temperature
    sims.fill_diagonal_(-math.inf)
    target = torch.cat((torch.arange(n, 2 * n), torch.arange(n)))
    return F.cross_entropy(sims, target)


def train_digest(
    inputs: torch.Tensor,
    *,
    low: float,
    high: float,
    steps: int = 1500,
    batch: int = 256,
    seed: int = 0,
    temperature: float = 0.1,
    dim: int = 64,
    hidden: int = 256,
    progress: Callable[[int, float], None] | None = None,
) -> DigestEncoder:
    """A digest trained on ``inputs`` (N×C×H×W prepared, unlabeled); ``progress(step, loss)``
    is called after each step. Deterministic for a seed on one thread."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x = inputs.to(torch.float32).cpu()
    encoder = DigestEncoder((x.shape[1], x.shape[2], x.shape[3]), dim=dim, hidden=hidden)
    opt = torch.optim.AdamW(encoder.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    encoder.train()
    b = min(batch, x.shape[0])
    for step in range(steps):
        idx = torch.randperm(x.shape[0], generator=gen)[:b]
        xb = x[idx]
        loss = nt_xent(
            encoder(view(xb, gen, low, high)), encoder(view(xb, gen, low, high)), temperature
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step + 1, float(loss.detach()))
    encoder.eval()
    encoder.threshold = pick_threshold(separation(encoder, x, low, high, seed=seed + 1))
    return encoder


@torch.no_grad()
def separation(
    encoder: DigestEncoder,
    inputs: torch.Tensor,
    low: float,
    high: float,
    seed: int = 1,
    families: tuple[str, ...] = FAMILIES,
) -> dict[str, tuple[float, float]]:
    """(5th percentile, median) cosine of an augmented copy to its original per family, and
    under ``"nearest distinct"`` the (median, 95th percentile) of each input's best cosine with
    another input (exact duplicates in the data left out)."""
    gen = torch.Generator().manual_seed(seed)
    x = inputs.to(torch.float32).cpu()
    e = encoder(x)
    out: dict[str, tuple[float, float]] = {}
    for family in families:
        c = (encoder(augment(x, family, gen, low, high)) * e).sum(dim=1)
        out[family] = (float(c.quantile(0.05)), float(c.median()))
    sims = e @ e.t()
    sims.fill_diagonal_(-2.0)
    same = (x.reshape(len(x), 1, -1) == x.reshape(1, len(x), -1)).all(dim=2)
    sims.masked_fill_(same, -2.0)
    best = sims.max(dim=1).values
    out["nearest distinct"] = (float(best.median()), float(best.quantile(0.95)))
    return out


def pick_threshold(figures: dict[str, tuple[float, float]]) -> float:
    """Halfway between the nearest distinct inputs' 95th percentile and the worst family's
    5th percentile, within [0.5, 0.95]: copies above it, most distinct inputs below."""
    copies = min(v[0] for k, v in figures.items() if k != "nearest distinct")
    distinct = figures["nearest distinct"][1]
    return round(min(0.95, max(0.5, (copies + distinct) / 2)), 3)
