"""Noise sources: fresh Gaussian noise, and keyed noise that a repeated request cannot average out.

Keyed noise is a deterministic pseudo-random function of (server secret, tier, a digest of the
logit vector). It is scoped to the tier, never to the API key: per-key noise is undone by a vote
across many cheap keys. The construction, and why:

* **Digest.** Each decision's logit vector z (a row, or a pixel's class vector) is projected on
  ``P`` random directions with zero sum (so adding a constant to every logit changes nothing),
  and each projection is quantised on a grid of step ``step_factor · scale`` (scale = the row's
  σ), with a per-tier random grid offset. A near-duplicate input moves z a little, which crosses a
  grid line with probability ≈ |Δ projection| / step, so it gets the same noise with high
  probability; genuinely different inputs land in different cells and get independent noise,
  which keeps every input's utility close to the tier's (no systematic bias).
  The projection reads the logits once, whatever the class count (no top-k needed for LMs).
* **Noise from the digest.** A 31-bit integer hash of (tier seed, cell) picks two rows of two
  fixed Gaussian tables generated from the server secret; their normalised sum is the noise
  vector (K² distinct vectors per class count). This is a gather, not a per-row generator, so
  a whole batch is modulated with a few vectorised tensor ops and no Python loop over rows,
  pixels or tokens. Classification rows may bring their own cell instead (``fine_cells``, or
  a ``ReplayMemory`` match).

Integer mixing stays within 31-bit values multiplied by 31-bit constants, so int64 arithmetic
never overflows and results are identical on every device.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from typing import Protocol

import torch

from .errors import ModulationArgumentError

_T = torch.Tensor
_C = torch.Tensor | None  # a row's own noise cells, or None
_MASK31 = (1 << 31) - 1
_M1 = 0x45D9F3B
_M2 = 0x5BD1E995
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
FINE_STEP = 0.01


class NoiseSource(Protocol):
    """Produces standard normal noise with the shape of ``logits``, one tensor per stream."""

    def sample(self, logits: _T, seeds: _T, scale: _T, streams: int, cells: _C = None) -> list[_T]:
        """``seeds`` (int64, one per row) and ``scale`` (one per row) key and size the digest;
        ``cells`` (N,), for N×C logits, replaces the digest (a replay memory's choice)."""
        ...


class FreshNoise:
    """Independent noise on every call (research use: it is undone by repeated queries)."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def sample(
        self, logits: _T, seeds: _T, scale: _T, streams: int, cells: _T | None = None
    ) -> list[_T]:
        return [
            torch.randn(
                logits.shape, generator=self.generator, dtype=logits.dtype, device=logits.device
            )
            for _ in range(streams)
        ]


def _fmix(h: torch.Tensor) -> torch.Tensor:
    """31-bit avalanche mix (no int64 overflow: values and constants stay below 2^31)."""
    h = h ^ (h >> 16)
    h = (h * _M1) & _MASK31
    h = h ^ (h >> 16)
    h = (h * _M1) & _MASK31
    return h ^ (h >> 16)


def _combine(h: torch.Tensor, v: torch.Tensor | int) -> torch.Tensor:
    return _fmix((h ^ (v & _MASK31)) * _M2 & _MASK31)


class KeyedNoise:
    """Keyed noise: the same (tier, input) gets the same noise; see the module docstring.

    ``projections`` and ``step_factor`` set the digest; larger steps resist jittered replays
    better, smaller steps spread noise over more cells (fairer across inputs). ``table_budget``
    bounds each Gaussian table to about that many floats (rows = a power of two in [64, 65536]).
    ``smooth`` and ``pixel_step_factor`` (segmentation only) are the window of the local mean the
    pixel digest is taken of and its grid step: a 1-pixel shift of a canvas moves the shipped
    segmenter's pixel logits far (it folds 4×4 pixels per cell), so the pixel grid is coarser
    than the row grid (docs/MODULATION.md has the measured trade-off).
    """

    def __init__(
        self,
        secret: bytes,
        projections: int = 4,
        step_factor: float = 0.35,
        table_budget: int = 1 << 22,
        smooth: int = 9,
        pixel_step_factor: float = 1.4,
    ) -> None:
        if not secret:
            raise ModulationArgumentError("secret", "empty", "has to be non-empty bytes")
        if not 1 <= projections <= 16:
            raise ModulationArgumentError("projections", projections, "has to be in [1, 16]")
        if not (math.isfinite(step_factor) and step_factor > 0):
            raise ModulationArgumentError("step_factor", step_factor, "has to be positive")
        self._secret = secret
        self.projections = projections
        self.step_factor = float(step_factor)
        if not (math.isfinite(pixel_step_factor) and pixel_step_factor > 0):
            raise ModulationArgumentError(
                "pixel_step_factor", pixel_step_factor, "has to be positive"
            )
        self.pixel_step_factor = float(pixel_step_factor)
        self.table_budget = table_budget
        if smooth < 1 or smooth % 2 == 0:
            raise ModulationArgumentError("smooth", smooth, "has to be an odd integer >= 1")
        self.smooth = smooth
        self._cache: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._salt_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._stream_salts: dict[tuple[int, str], torch.Tensor] = {}
        self._tier_seeds: dict[str, int] = {}

    def __repr__(self) -> str:  # never show the secret
        return f"KeyedNoise(projections={self.projections}, step_factor={self.step_factor})"

    def _derive(self, *parts: str) -> int:
        msg = "\x00".join(parts).encode()
        digest = hmac.new(self._secret, msg, hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "little") & ((1 << 62) - 1)

    def tier_seed(self, tier: str) -> int:
        """The 62-bit seed of a tier; rows of a batch carry one each.

        Scoped to the tier, never to the API key: per-key noise gives every extra key a fresh
        draw, and a majority vote over 21 cheap keys took bronze from 65% to 96%.
        """
        # Asked once per request: an HMAC each time was 4% of the event loop under load.
        seed = self._tier_seeds.get(tier)
        if seed is None:
            seed = self._tier_seeds[tier] = self._derive("tier", tier)
        return seed

    def namespace(self) -> str:
        """A hex name derived from the secret (not revealing it): scopes shared state, such as
        the replay memory in Redis, to the servers that share this secret."""
        return f"{self._derive('namespace'):016x}"

    def seeds(self, tiers: list[str]) -> torch.Tensor:
        """Seeds for a batch of rows, given each row's tier name, as an int64 tensor."""
        return torch.tensor([self.tier_seed(t) for t in tiers], dtype=torch.int64)

    def table_rows(self, num_classes: int) -> int:
        rows = 1 << max(0, int(math.log2(max(1, self.table_budget // num_classes))))
        return min(65536, max(64, rows))

    def _tables(
        self, num_classes: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = (num_classes, str(device))
        if key not in self._cache:
            gen = torch.Generator().manual_seed(self._derive("tables", str(num_classes)))
            rows = self.table_rows(num_classes)
            tables = torch.randn(2, rows, num_classes, generator=gen)
            proj = torch.randn(num_classes, self.projections, generator=gen, dtype=torch.float64)
            proj = proj - proj.mean(dim=0, keepdim=True)  # zero-sum: invariant to logit shifts
            proj = proj / proj.norm(dim=0, keepdim=True).clamp_min(1e-12)
            self._cache[key] = (tables[0].to(device), tables[1].to(device), proj.to(device))
        return self._cache[key]

    def digest(
        self, logits: torch.Tensor, seeds: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        """31-bit cell hash per decision: N for N×C logits, N×(H·W) for N×C×H×W."""
        n, c = logits.shape[:2]
        _, _, proj = self._tables(c, logits.device)
        seeds = seeds.to(logits.device, torch.int64)
        lo, hi = seeds & _MASK31, (seeds >> 31) & _MASK31
        if logits.dim() == 2:
            # float64 keeps the projection of a row independent of the batch it is in.
            p = logits.to(torch.float64) @ proj  # N×P
            shape: tuple[int, ...] = (n, 1)
        else:
            p = torch.matmul(proj.t().to(logits.dtype), logits.reshape(n, c, -1))  # N×P×HW
            if self.smooth > 1:
                # Pixel logits react to pixel-level input jitter; their local mean reacts less,
                # so a finer grid (fairer across keys) keeps the same replay resistance. The
                # projection is linear, so pooling P channels equals pooling all C logits.
                p = torch.nn.functional.avg_pool2d(
                    p.view(n, self.projections, *logits.shape[2:]),
                    self.smooth,
                    stride=1,
                    padding=self.smooth // 2,
                    count_include_pad=False,
                ).reshape(n, self.projections, -1)
            p = p.transpose(1, 2).to(torch.float64)  # N×HW×P
            shape = (n, 1, 1)
        factor = self.step_factor if logits.dim() == 2 else self.pixel_step_factor
        step = (scale.to(logits.device, torch.float64) * factor).clamp_min(1e-6)
        salts, weights = self._salts(logits.device)
        # Per-tier grid offsets in [0, 1), one per projection (N×P), broadcast over pixels.
        offset = _fmix(lo[:, None] ^ salts).to(torch.float64) / (1 << 31)
        cells = torch.floor(p / step.view(shape) + offset.view(n, *shape[1:-1], -1))
        q = cells.clamp(-(1 << 30), 1 << 30).to(torch.int64) & _MASK31
        # A weighted sum hashes all P cells at once: q < 2^31 and weights < 2^27, so P <= 16
        # terms stay below 2^63 and nothing overflows.
        h = (q * weights).sum(dim=-1) & _MASK31
        return _combine(_combine(h, lo.view(shape[:-1])), hi.view(shape[:-1]))

    def _salts(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._salt_cache:  # fixed per device: made once, not per batch
            k = torch.arange(1, self.projections + 1, dtype=torch.int64, device=device)
            salts = (k * 0x27D4EB2F) & _MASK31
            weights = (_fmix(k * 0x165667B1 & _MASK31) & ((1 << 27) - 1)) | 1
            self._salt_cache[key] = (salts, weights)
        return self._salt_cache[key]

    def fine_cells(self, logits: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """A σ-independent fine digest of N×C logits (N,): the cell of a first-seen input.

        The grid step is ``FINE_STEP`` of the row's logit spread, so distinct inputs (whose
        logits differ by a good part of their spread) land in different cells and get
        independent noise, while float noise from batching (1e-6) almost never crosses a line.
        Not depending on σ makes the served noise of every row a fixed vector, so σ can be
        calibrated on the agreement actually served.
        """
        spread = logits.to(torch.float64).std(dim=1).clamp_min(1e-6)
        return self.digest(logits, seeds, spread * (FINE_STEP / self.step_factor))

    def sample(self, logits: _T, seeds: _T, scale: _T, streams: int, cells: _C = None) -> list[_T]:
        n, c = logits.shape[:2]
        table_a, table_b, _ = self._tables(c, logits.device)
        rows = table_a.shape[0]
        if cells is not None and logits.dim() == 2:
            h = cells.to(logits.device, torch.int64).reshape(-1) & _MASK31
        else:
            h = self.digest(logits, seeds, scale).reshape(-1)
        # Stream s reads row _combine(h, 2s + 1) of table a and _combine(h, 2s + 2) of table b;
        # all 2·streams indices are hashed in one pass (the same integers, fewer torch calls).
        salts = self._stream_salts.get((streams, str(h.device)))
        if salts is None:
            salts = torch.arange(1, 2 * streams + 1, dtype=torch.int64, device=h.device)
            self._stream_salts[(streams, str(h.device))] = salts
        index = (_combine(h[None, :], salts[:, None]) % rows).unbind(0)
        out = []
        for s in range(streams):
            i, j = index[2 * s], index[2 * s + 1]
            noise = (table_a.index_select(0, i) + table_b.index_select(0, j)).mul_(_INV_SQRT2)
            if logits.dim() == 4:
                # Gathered as N·H·W×C; a permuted view avoids a copy back to N×C×H×W.
                noise = noise.view(n, *logits.shape[2:], c).permute(0, 3, 1, 2)
            out.append(noise.to(logits.dtype))
        return out
