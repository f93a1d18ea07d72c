"""Honest utility across many server secrets, offline: what bench/attacks.py's honest run serves.

`digits`, bronze at `utility: 0.65`, all 1,797 digits in the attack bench's order (permutation
seed 7, 8 per request) through a fresh replay memory keyed on the shipped digest at each
threshold, each row served its memory cluster's first answer (``service/serving/answers.py``):
the agreement with the clean model, minus 0.65, per secret and per way of calibrating σ:

* ``served``: σ bisected on the agreement one secret's keyed draws realise on the 500
  calibration digits, each its own (the method until 2026-12-03);
* ``memory``: σ bisected on the agreement expected through the memory (each calibration digit
  served the answer of its cluster's first digit, ``expected_agreement(..., anchors)``), the
  method ``calibration.tier_sigmas`` uses now; it does not depend on the secret.

The modulation core only (the same functions the engine calls), so it runs in seconds; for the
secrets it was checked on (s1…s5) it gives bench/attacks.py's figures to the digit. Ends with
each method's mean, standard deviation and worst deviation over the secrets.

    python bench/honest_secrets.py [--thresholds 0.8,0.81] [--secrets s1,s2,s3,s4,s5]
        [--extra 20]    # adds secrets h1…h20, not used to choose anything
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from service.models import calibration_inputs, load_model
from service.models.data import digits_splits
from service.models.digests import digest_path
from service.modulation import (
    KeyedNoise,
    ReplayMemory,
    load_digest,
    memory_anchors,
    served_noise,
    sigma_for_agreement,
    sigma_for_served_agreement,
)

TARGET = 0.65


def stream_anchors(
    keyed: KeyedNoise, z: torch.Tensor, e: torch.Tensor, threshold: float, batch: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's cluster's first row and each row's served noise, as the engine serves a
    stream of ``batch``-row requests of tier bronze through a fresh memory."""
    n = z.shape[0]
    seeds = keyed.seeds(["bronze"] * n)
    own = keyed.fine_cells(z, seeds)
    memory = ReplayMemory(threshold=threshold)
    cells = torch.cat(
        [
            memory.assign(
                ["bronze"] * len(own[i : i + batch]),
                e[i : i + batch],
                torch.zeros(len(own[i : i + batch]), dtype=torch.int64),
                own[i : i + batch],
            )
            for i in range(0, n, batch)
        ]
    )
    first: dict[int, int] = {}
    anchors = torch.tensor([first.setdefault(c, i) for i, c in enumerate(cells.tolist())])
    noise = keyed.sample(z, seeds, torch.ones(n), 1, cells=cells)[0]
    return anchors, noise


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--thresholds", default="0.8,0.81")
    parser.add_argument("--secrets", default="s1,s2,s3,s4,s5")
    parser.add_argument("--extra", type=int, default=20, help="secrets h1…hN besides --secrets")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model("digits")
    path = digest_path("digits")
    assert path is not None
    digest = load_digest(path)
    splits = digits_splits()
    every = np.concatenate([s[0] for s in (splits.train, splits.calibration, splits.heldout)])
    order = np.random.default_rng(7).permutation(len(every))
    x = torch.as_tensor(every[order] / 16.0, dtype=torch.float32)[:, None]
    xc = calibration_inputs("digits")
    with torch.inference_mode():
        z, e, zc, ec = model.forward(x), digest(x), model.forward(xc), digest(xc)
    top = z.argmax(1)
    secrets = [s for s in args.secrets.split(",") if s] + [
        f"h{i}" for i in range(1, args.extra + 1)
    ]
    integral = sigma_for_agreement(zc, TARGET)
    print("| threshold | secret | served σ | served | memory σ | memory |")
    print("| --- | --- | --- | --- | --- | --- |")
    for threshold in (float(t) for t in args.thresholds.split(",")):
        through = sigma_for_agreement(zc, TARGET, anchors=memory_anchors(ec, threshold))
        results: dict[str, list[float]] = {"served": [], "memory": []}
        for secret in secrets:
            keyed = KeyedNoise(secret.encode())
            noise_at = served_noise(keyed, "bronze", zc)
            served = sigma_for_served_agreement(zc, TARGET, noise_at, start=integral)
            anchors, noise = stream_anchors(keyed, z, e, threshold)
            row = []
            for name, sigma in (("served", served), ("memory", through)):
                agree = float(((z[anchors] + sigma * noise).argmax(1) == top).double().mean())
                results[name].append(100 * (agree - TARGET))
                row += [f"{sigma:.3f}", f"{results[name][-1]:+.2f} pp"]
            print(f"| {threshold} | {secret} | " + " | ".join(row) + " |", flush=True)
        for name, pp in results.items():
            named = pp[: len(secrets) - args.extra]
            print(
                f"threshold {threshold}, {name}: {len(pp)} secrets, mean {statistics.mean(pp):+.2f}"
                f" pp, sd {statistics.pstdev(pp):.2f} pp, worst |dev| {max(map(abs, pp)):.2f} pp,"
                f" outside 2.5 pp {sum(abs(v) > 2.5 for v in pp)}; --secrets only: worst |dev| "
                f"{max(map(abs, named), default=0.0):.2f} pp",
                flush=True,
            )


if __name__ == "__main__":
    main()
