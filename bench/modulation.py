"""Modulation time against model forward time, fresh vs keyed noise, on this machine's CPU
(or GPU with --device cuda).

    python bench/modulation.py [--device cpu] [--repeats 5] [--shapes default|gpu]

Prints one line per case: forward ms (for the shipped models), fresh and keyed modulation ms
(median of repeats), and the keyed/fresh ratio. For the largest shape it also prints the memory
floor (read the logits once, write once) and how far keyed noise is from it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from service.modulation import BatchModulation, FreshNoise, KeyedNoise, modulate


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()  # warm-up (tables, allocator)
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000


def memory_floor_ms(logits: torch.Tensor, device: torch.device, repeats: int) -> float:
    out = torch.empty_like(logits)
    return timed(lambda: out.copy_(logits), repeats, device)


def bench_logits(
    name: str, logits: torch.Tensor, repeats: int, forward_ms: float | None, floor: bool
) -> None:
    device = logits.device
    n = logits.shape[0]
    keyed = KeyedNoise(b"bench-modulation")
    params = BatchModulation(
        torch.full((n,), 4.0, device=device), keyed.seeds(["silver"] * n).to(device)
    )
    fresh = FreshNoise()
    fresh_ms = timed(lambda: modulate(logits, params, fresh), repeats, device)
    keyed_ms = timed(lambda: modulate(logits, params, keyed), repeats, device)
    fwd = f"{forward_ms:9.3f}" if forward_ms is not None else f"{'-':>9}"
    line = (
        f"{name:<28} {tuple(logits.shape)!s:<22} {fwd} {fresh_ms:10.3f} {keyed_ms:10.3f} "
        f"{keyed_ms / fresh_ms:8.2f}"
    )
    if floor:
        f = memory_floor_ms(logits, device, repeats)
        line += f"   floor {f:.3f} ms, keyed/floor {keyed_ms / f:.2f}"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", choices=["default", "gpu"], default="default")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"{'case':<28} {'logits':<22} {'fwd ms':>9} {'fresh ms':>10} {'keyed ms':>10} "
        f"{'keyed/fresh':>8}"
    )
    if args.shapes == "default":
        from service.models import heldout, load_model

        for name, batch in (("digits", 64), ("digit-scenes", 8)):
            model = load_model(name, device)
            inputs = heldout(name)[0][:batch].to(device)
            forward_ms = timed(lambda m=model, x=inputs: m.forward(x), args.repeats, device)
            bench_logits(
                f"{name} (batch {batch})", model.forward(inputs), args.repeats, forward_ms, False
            )
        shapes = [(8, 150, 256, 256)]
    else:
        shapes = [(64, 1000), (64, 128256), (8, 150, 512, 512)]
    gen = torch.Generator().manual_seed(0)
    for shape in shapes:
        logits = (torch.randn(shape, generator=gen) * 4).to(device)
        bench_logits("synthetic", logits, args.repeats, None, floor=len(shape) == 4)


if __name__ == "__main__":
    main()
