"""Replay resistance of keyed noise: does majority voting over repeated queries recover utility?

For each shipped model, at the σ that gives about 65% accuracy (pixel accuracy for scenes):
single-query accuracy, and majority vote over 32 queries that are identical, or that each carry
independent input jitter (std 2% of the input range), for keyed and fresh noise, over several
keys. Also the spread of single-query accuracy across keys (fairness: every key of a tier gets
the tier's utility; fresh noise gives the binomial floor).

    python bench/replay.py [--keys 20] [--queries 32] [--jitter 0.02] [--out out/replay.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from service.models import heldout, load_model
from service.modulation import BatchModulation, FreshNoise, KeyedNoise, modulate, predicted_accuracy


def sigma_for_accuracy(logits: torch.Tensor, labels: torch.Tensor, target: float) -> float:
    flat_logits = (
        logits if logits.dim() == 2 else logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    )
    flat_labels = labels.reshape(-1)
    lo, hi = 0.01, 100.0
    for _ in range(40):
        mid = (lo * hi) ** 0.5
        if predicted_accuracy(flat_logits, flat_labels, mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo * hi) ** 0.5


def run_model(
    name: str,
    keys: int,
    queries: int,
    jitter: float,
    target: float,
    keyed_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    model = load_model(name)
    inputs, labels = heldout(name)
    spec = model.input_spec
    span = (spec.high - spec.low) / spec.scale  # the prepared input range
    with torch.inference_mode():
        clean = model.forward(inputs)
    sigma = sigma_for_accuracy(clean, labels, target)
    n = inputs.shape[0]
    gen = torch.Generator().manual_seed(0)
    jittered = []
    for _ in range(queries):
        x = inputs + jitter * span * torch.randn(inputs.shape, generator=gen)
        x = x.clamp(spec.low / spec.scale, spec.high / spec.scale)
        with torch.inference_mode():
            jittered.append(model.forward(x))
    result: dict[str, Any] = {
        "model": name,
        "sigma": round(sigma, 4),
        "keys": keys,
        "queries": queries,
        "jitter": jitter,
        "decisions": int(labels.numel()),
    }
    for mode in ("keyed", "fresh"):
        source: Any = (
            KeyedNoise(b"bench-replay", **(keyed_options or {}))
            if mode == "keyed"
            else FreshNoise(torch.Generator().manual_seed(1))
        )
        single, vote_same, vote_jit = [], [], []
        for k in range(keys):
            seeds = KeyedNoise(b"bench-replay").seeds([(f"key-{k}", "silver")] * n)
            params = BatchModulation(torch.full((n,), sigma), seeds)

            def acc(pred: torch.Tensor) -> float:
                return float((pred == labels).float().mean())

            preds_same = torch.stack(
                [modulate(clean, params, source).argmax(1) for _ in range(queries)]
            )
            preds_jit = torch.stack([modulate(z, params, source).argmax(1) for z in jittered])
            single.append(acc(preds_same[0]))
            vote_same.append(acc(preds_same.mode(dim=0).values))
            vote_jit.append(acc(preds_jit.mode(dim=0).values))
        s = statistics.mean(single)
        result[mode] = {
            "single": round(s, 4),
            "vote_identical": round(statistics.mean(vote_same), 4),
            "vote_jitter": round(statistics.mean(vote_jit), 4),
            "gain_identical_pp": round(100 * (statistics.mean(vote_same) - s), 2),
            "gain_jitter_pp": round(100 * (statistics.mean(vote_jit) - s), 2),
            "spread_across_keys_pp": round(100 * statistics.pstdev(single), 2),
        }
    with torch.inference_mode():
        result["clean_accuracy"] = round(float((clean.argmax(1) == labels).float().mean()), 4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--jitter", type=float, default=0.02)
    parser.add_argument("--target", type=float, default=0.65)
    parser.add_argument("--models", default="digits,digit-scenes")
    parser.add_argument("--step-factor", type=float, default=None, help="KeyedNoise step_factor")
    parser.add_argument("--projections", type=int, default=None, help="KeyedNoise projections")
    parser.add_argument("--smooth", type=int, default=None, help="KeyedNoise smooth window")
    parser.add_argument("--out", type=Path, default=Path("out/replay.json"))
    args = parser.parse_args()
    results = []
    for name in args.models.split(","):
        keys = args.keys if name == "digits" else max(4, args.keys // 4)
        options = {
            "step_factor": args.step_factor,
            "projections": args.projections,
            "smooth": args.smooth,
        }
        options = {k: v for k, v in options.items() if v is not None}
        r = run_model(name, keys, args.queries, args.jitter, args.target, options)
        results.append(r)
        print(
            f"\n{name}: σ={r['sigma']} clean={r['clean_accuracy']} keys={keys} "
            f"decisions={r['decisions']}"
        )
        print(
            f"{'noise':>6} {'single':>8} {'vote32 same':>12} {'gain':>7} {'vote32 jit':>11} "
            f"{'gain':>7} {'spread':>7}"
        )
        for mode in ("keyed", "fresh"):
            m = r[mode]
            print(
                f"{mode:>6} {m['single']:>8.4f} {m['vote_identical']:>12.4f} "
                f"{m['gain_identical_pp']:>+6.1f}pp {m['vote_jitter']:>11.4f} "
                f"{m['gain_jitter_pp']:>+6.1f}pp "
                f"{m['spread_across_keys_pp']:>5.1f}pp"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
