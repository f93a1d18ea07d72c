"""Offline study of replay resistance on `digits`: vote gain per augmentation family against
per-class fairness, for several noise constructions (no server; the modulation core only).

At bronze (σ for a target agreement, default 0.65, by the ordering integral on the calibration
split), for each construction:

* vote gain: majority over 32 augmented copies of each of 200 held-out images, per family and
  mixed, minus the single-query accuracy on the originals; "orig first" asks the original before
  the copies (a replay memory then anchors on it), otherwise the copies come alone;
* fairness: all 1,797 digits asked once in a shuffled order; per class, realised agreement
  against the ordering integral's prediction at the same overall agreement; the worst class's
  distance in units of its bound max(12 pp, 4.5 binomial SD) (≤ 1 passes).

Constructions: `grid` (the old σ-scaled logit grid digest), `fine` (σ-independent fine digest, no
memory), `fresh` (iid noise per query), `memory@T` (a per-tier replay memory on the penultimate
embedding, cosine threshold T, reusing the match's noise) and `answer@T` (reusing the match's
whole modulated answer).

    python bench/replay.py [--target 0.65] [--thresholds 0.97,0.98,0.99] [--secrets 3]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from augment import FAMILIES, augment, worst_class

from service.models import load_model
from service.models.data import digits_splits
from service.modulation import KeyedNoise, ReplayMemory, sigma_for_agreement

TIER = "bronze"


class Served:
    """One construction: answers (labels) for a sequence of query batches, memory kept across."""

    def __init__(
        self, kind: str, secret: bytes, sigma: float, threshold: float = 0.98, chain: bool = True
    ) -> None:
        self.kind, self.sigma = kind, sigma
        self.keyed = KeyedNoise(secret)
        self.memory = (
            ReplayMemory(threshold=threshold, chain=chain) if kind in ("memory", "answer") else None
        )
        self.answers: dict[int, int] = {}
        self.gen = torch.Generator().manual_seed(int.from_bytes(secret[:4], "little"))

    def ask(self, z: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        n = z.shape[0]
        seeds = self.keyed.seeds([TIER] * n)
        if self.kind == "fresh":
            return (z + self.sigma * torch.randn(z.shape, generator=self.gen)).argmax(1)
        if self.kind == "grid":
            noise = self.keyed.sample(z, seeds, torch.full((n,), self.sigma), 1)[0]
            return (z + self.sigma * noise).argmax(1)
        cells = self.keyed.fine_cells(z, seeds)
        if self.memory is not None:
            cells = self.memory.assign([TIER] * n, emb, z.argmax(1), cells)
        noise = self.keyed.sample(z, seeds, torch.ones(n), 1, cells=cells)[0]
        labels = (z + self.sigma * noise).argmax(1)
        if self.kind == "answer":
            # The first answer given in a cell is the cell's answer from then on.
            out = []
            for c, lab in zip(cells.tolist(), labels.tolist(), strict=True):
                out.append(self.answers.setdefault(c, lab))
            labels = torch.tensor(out)
        return labels


CENTRE: list[torch.Tensor] = []


def forward(model: Any, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        z, e = model.module.forward_with_embedding((raw / 16.0)[:, None])
    return z, (e - CENTRE[0] if CENTRE else e)


def vote_gains(
    make: Any, model: Any, x: torch.Tensor, y: torch.Tensor, copies: int
) -> dict[str, float]:
    z0, e0 = forward(model, x)
    out: dict[str, float] = {}
    for first in (True, False):
        for family in (*FAMILIES, "mixed"):
            served = make()
            gen = torch.Generator().manual_seed(hash(family) % 1000)
            if first:
                served.ask(z0, e0)
            votes = []
            for _ in range(copies):
                z, e = forward(model, augment(x, family, gen))
                votes.append(served.ask(z, e))
            stack = torch.stack(votes)
            vote = stack.mode(dim=0).values
            # Against what one such query gets: the mean accuracy of the answers voted on.
            gain = float((vote == y).float().mean() - (stack == y).float().mean())
            out[f"{family}{'' if first else '/alone'}"] = round(100 * gain, 1)
    return out


def fairness(make: Any, model: Any, x: torch.Tensor) -> dict[str, float]:
    z, e = forward(model, x)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(7))
    served = make()
    labels = torch.empty(x.shape[0], dtype=torch.int64)
    for start in range(0, len(order), 8):
        idx = order[start : start + 8]
        labels[idx] = served.ask(z[idx], e[idx])
    overall, worst = worst_class(z, labels == z.argmax(1))
    matched = served.memory.stats.matched if served.memory is not None else 0
    return {"agreement": round(overall, 4), "worst_class": round(worst, 2), "merged": matched}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", type=float, default=0.65)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--copies", type=int, default=32)
    parser.add_argument("--thresholds", default="0.97,0.98,0.99")
    parser.add_argument("--kinds", default="grid,fine,fresh,memory,answer")
    parser.add_argument("--secrets", type=int, default=3)
    parser.add_argument("--centre", action="store_true", help="centre embeddings (calibration)")
    parser.add_argument("--no-chain", action="store_true", help="store first-seen rows only")
    parser.add_argument("--out", type=Path, default=Path("out/replay.json"))
    args = parser.parse_args()
    model = load_model("digits")
    splits = digits_splits()
    cal = torch.from_numpy(splits.calibration[0].copy())
    held_x = torch.from_numpy(splits.heldout[0][: args.images].copy())
    held_y = torch.from_numpy(splits.heldout[1][: args.images].copy())
    every = torch.cat([torch.from_numpy(s[0].copy()) for s in (splits.train, splits.calibration)])
    every = torch.cat([every, torch.from_numpy(splits.heldout[0].copy())])
    if args.centre:
        CENTRE.append(forward(model, cal)[1].mean(dim=0))
    sigma = sigma_for_agreement(forward(model, cal)[0], args.target)
    print(f"digits, target {args.target}: σ = {sigma:.3f}")
    rows = []
    for kind in args.kinds.split(","):
        for t in args.thresholds.split(",") if kind in ("memory", "answer") else ["-"]:
            name = kind if t == "-" else f"{kind}@{t}"
            for s in range(args.secrets):
                secret = f"study-{s}".encode()

                def make(kind: str = kind, t: str = t, secret: bytes = secret) -> Served:
                    threshold = float(t) if t != "-" else 0.98
                    return Served(kind, secret, sigma, threshold, not args.no_chain)

                gains = vote_gains(make, model, held_x, held_y, args.copies)
                fair = fairness(make, model, every)
                rows.append({"construction": name, "secret": s, **gains, **fair})
                print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
