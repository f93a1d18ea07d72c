"""The replay digest: a small encoder, apart from the classifier, whose unit vectors are the
replay memory's keys.

The memory must tell "the same input, augmented" (reuse its noise) from "another input of the
same class" (fresh noise). The classifier's own penultimate layer cannot: it is trained to map
every digit of a class together, and an 8×8 digit with two pixels dropped sits further from itself
there than from its nearest distinct twin (docs/MODULATION.md). The digest is trained for the
opposite goal, contrastively (``digest_training``): augmented copies together, distinct inputs
apart.

Before the network the input is **canonicalised**, so that the families that are cheapest to
remove by construction never reach it:

* shifted so that its centre of mass sits in the middle (sub-pixel, bilinear): shifts of the
  object become near no-ops;
* standardised per image (mean 0, standard deviation 1): brightness and contrast scalings are
  removed exactly (up to clamping at the input range);
* images above ``side`` pixels are average-pooled down to ``side`` (a coarse view: it also damps
  jitter and blur).

The file (safetensors) carries the weights and, as metadata, the input shape, the sizes and the
cosine ``threshold`` the training chose (the memory's match threshold for this digest).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ModulationArgumentError

KIND = "aim-digest"
VERSION = 1


def canonicalise(x: torch.Tensor, side: int = 16) -> torch.Tensor:
    """N×C×H×W prepared inputs → N×C×s×s, centred on their mass and standardised per image."""
    if x.dim() != 4:
        raise ModulationArgumentError("inputs", tuple(x.shape), "have to be N×C×H×W")
    x = x.to(torch.float32)
    n, _, h, w = x.shape
    if max(h, w) > side:
        x = F.adaptive_avg_pool2d(x, (min(h, side), min(w, side)))
        h, w = x.shape[-2:]
    mass = x.sum(dim=1).clamp_min(0.0)  # N×H×W, the object's weight per pixel
    total = mass.sum(dim=(1, 2)).clamp_min(1e-6)
    ys = torch.arange(h, dtype=torch.float32, device=x.device)
    xs = torch.arange(w, dtype=torch.float32, device=x.device)
    cy = (mass.sum(dim=2) * ys).sum(dim=1) / total
    cx = (mass.sum(dim=1) * xs).sum(dim=1) / total
    # grid_sample coordinates are in [-1, 1] (align_corners=True): one pixel is 2/(side-1).
    ty = (cy - (h - 1) / 2) * 2 / max(h - 1, 1)
    tx = (cx - (w - 1) / 2) * 2 / max(w - 1, 1)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    flat = x.reshape(n, -1)
    flat = (flat - flat.mean(dim=1, keepdim=True)) / flat.std(dim=1, keepdim=True).clamp_min(1e-6)
    return flat.view_as(x)


class DigestEncoder(nn.Module):
    """Canonicalisation, then an MLP to a ``dim``-d unit vector; see the module doc."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        dim: int = 64,
        hidden: int = 256,
        side: int = 16,
        threshold: float = 0.8,
    ) -> None:
        super().__init__()
        c, h, w = shape
        self.shape = (int(c), int(h), int(w))
        self.side = int(side)
        self.dim = int(dim)
        self.hidden = int(hidden)
        self.threshold = float(threshold)
        inner = c * min(h, side) * min(w, side)
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(inner, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(canonicalise(x, self.side)), dim=1, eps=1e-12)

    def meta(self) -> dict[str, str]:
        """The file's metadata: one key (safetensors writes several in random order; one keeps
        the bytes of a retrained file stable)."""
        fields = {
            "version": VERSION,
            "shape": list(self.shape),
            "dim": self.dim,
            "hidden": self.hidden,
            "side": self.side,
            "threshold": self.threshold,
        }
        return {KIND: json.dumps(fields, sort_keys=True)}

    def fingerprint(self) -> str:
        """12 hex digits of the weights' hash: names the digest (a memory's entries are only
        comparable under one digest)."""
        h = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:12]


def save_digest(encoder: DigestEncoder, path: str | Path) -> None:
    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, str(path), metadata=encoder.meta())


def load_digest(path: str | Path, device: str | torch.device = "cpu") -> DigestEncoder:
    """A digest written by ``save_digest``; ``ModulationArgumentError`` naming the file when it
    is not one."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModulationArgumentError("digest", str(path), "is not a file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # safetensors raises its own error types
        raise ModulationArgumentError(
            "digest", str(path), f"is not a safetensors file ({exc})"
        ) from None
    if KIND not in meta:
        raise ModulationArgumentError("digest", str(path), "is not a digest (aim digest train)")
    meta = json.loads(meta[KIND])
    shape = tuple(int(v) for v in meta["shape"])
    encoder = DigestEncoder(
        (shape[0], shape[1], shape[2]),
        dim=int(meta["dim"]),
        hidden=int(meta["hidden"]),
        side=int(meta["side"]),
        threshold=float(meta["threshold"]),
    )
    encoder.load_state_dict(state)
    return encoder.to(device).eval()
